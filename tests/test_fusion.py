"""Fusion rules on hand-made probability arrays."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_hpc.evaluate.fusion import (
    EPS,
    FUSION_RULES,
    FusionMismatchError,
    Member,
    PredictionSet,
    check_aligned,
    fuse,
    greedy_weights,
    max_confidence_rule,
    mean_rule,
    product_rule,
    vote_rule,
)


def pset(probs, labels, digest="d0", indices=None) -> PredictionSet:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    return PredictionSet(probs, labels, indices, digest)


def random_probs(rng, n, k, labels=None, signal=1.0):
    logits = rng.normal(size=(n, k))
    if labels is not None:
        logits += signal * np.eye(k)[labels]
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def members(seed=0, m=3, n_test=50, n_val=40, k=4, signals=(1.5, 1.0, 0.3)):
    rng = np.random.default_rng(seed)
    test_labels, val_labels = rng.integers(0, k, n_test), rng.integers(0, k, n_val)
    out = []
    for index in range(m):
        out.append(
            Member(
                f"m{index}",
                pset(random_probs(rng, n_test, k, test_labels, signals[index]), test_labels, "T"),
                pset(random_probs(rng, n_val, k, val_labels, signals[index]), val_labels, "V"),
            )
        )
    return out, test_labels, val_labels


# --------------------------------------------------------------------------- product


def test_product_is_argmax_of_summed_log_probabilities():
    rng = np.random.default_rng(1)
    probs = [random_probs(rng, 200, 5) for _ in range(3)]
    fused = product_rule(probs)
    expected = np.argmax(np.sum([np.log(p) for p in probs], axis=0), axis=1)
    assert np.array_equal(fused.argmax(axis=1), expected)
    direct = probs[0] * probs[1] * probs[2]
    assert np.allclose(fused, direct / direct.sum(axis=1, keepdims=True))
    assert np.allclose(fused.sum(axis=1), 1.0)


def test_product_copes_with_zeros():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.0, 0.8], [0.0, 0.0, 1.0]])
    b = np.array([[0.0, 1.0, 0.0], [0.0, 0.9, 0.1], [0.1, 0.9, 0.0], [0.0, 0.0, 1.0]])
    fused = product_rule([a, b])
    assert np.all(np.isfinite(fused)) and np.allclose(fused.sum(axis=1), 1.0)
    expected = np.argmax(np.log(np.clip(a, EPS, 1)) + np.log(np.clip(b, EPS, 1)), axis=1)
    assert np.array_equal(fused.argmax(axis=1), expected)
    # row 0: each member rules out the other's class; the tie between classes 0 and 1 goes to class 0
    # row 2: every class has a zero somewhere; class 0 is the only one with no zero at all
    assert fused.argmax(axis=1).tolist() == [0, 1, 0, 2]


def test_mean_rule():
    a, b = np.array([[0.6, 0.4]]), np.array([[0.0, 1.0]])
    assert np.allclose(mean_rule([a, b]), [[0.3, 0.7]])


# --------------------------------------------------------------------------- vote


def test_vote_majority_and_deterministic_tie_breaks():
    # four members, three examples
    m = [
        np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.6, 0.4, 0.0]]),
        np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.4, 0.6, 0.0]]),
        np.array([[0.1, 0.9, 0.0], [0.1, 0.9, 0.0], [0.6, 0.4, 0.0]]),
        np.array([[0.2, 0.3, 0.5], [0.3, 0.7, 0.0], [0.4, 0.6, 0.0]]),
    ]
    fused = vote_rule(m)
    # ex 0: 2 votes for class 0 against 1 and 1 -> class 0 (majority)
    # ex 1: 2 votes each for classes 0 and 1; summed probability 1.6 (class 0) vs 2.4 (class 1) -> class 1
    # ex 2: 2 votes each; summed probability 2.0 vs 2.0 -> the lowest class index, 0
    assert fused.argmax(axis=1).tolist() == [0, 1, 0]
    assert np.allclose(fused.sum(axis=1), 1.0)
    # the same whatever the order of the members
    for order in ([3, 2, 1, 0], [1, 3, 0, 2]):
        assert vote_rule([m[i] for i in order]).argmax(axis=1).tolist() == [0, 1, 0]


def test_vote_never_overrides_a_strict_majority_with_probabilities():
    confident = np.array([[0.0, 1.0]])
    lukewarm = np.array([[0.51, 0.49]])
    assert vote_rule([confident, lukewarm, lukewarm]).argmax(axis=1).tolist() == [0]


# --------------------------------------------------------------------------- max confidence


def test_max_confidence_lets_the_most_confident_member_decide():
    a = np.array([[0.7, 0.3], [0.55, 0.45], [0.8, 0.2]])
    b = np.array([[0.1, 0.9], [0.4, 0.6], [0.2, 0.8]])
    fused, deciding = max_confidence_rule([a, b])
    assert deciding.tolist() == [1, 1, 0]  # equal confidence (0.8) -> the member listed first
    assert fused.argmax(axis=1).tolist() == [1, 1, 0]
    assert np.allclose(fused, [b[0], b[1], a[2]])


# --------------------------------------------------------------------------- fitted rules never see test labels


def _values(detail) -> np.ndarray:
    return np.asarray(list(detail.values()) if isinstance(detail, dict) else detail)


@pytest.mark.parametrize("rule", ["stacking", "greedy"])
def test_fitted_rules_never_see_test_labels(rule):
    group, test_labels, _ = members(seed=3)
    reference = fuse(rule, group)
    rng = np.random.default_rng(99)
    for scrambled_labels in (rng.permutation(test_labels), np.zeros_like(test_labels), (test_labels + 1) % 4):
        scrambled = [Member(m.name, pset(m.test.probs, scrambled_labels, "T"), m.val) for m in group]
        again = fuse(rule, scrambled)
        assert np.array_equal(again.probs, reference.probs)
        assert again.details.keys() == reference.details.keys()
        for name, value in reference.details.items():  # stacking: coef, intercept; greedy: weights
            assert np.array_equal(_values(again.details[name]), _values(value))
    # ...while the validation labels do matter (the test above could not pass by accident)
    shuffled_val = np.random.default_rng(5).permutation(group[0].val.labels)
    moved = [Member(m.name, m.test, pset(m.val.probs, shuffled_val, "V")) for m in group]
    if rule == "stacking":
        assert not np.allclose(fuse(rule, moved).details["coef"], reference.details["coef"])


def test_stacking_output_is_a_distribution_over_all_classes_even_if_validation_lacks_one():
    rng = np.random.default_rng(4)
    val_labels = rng.integers(0, 3, 60)  # class 3 never appears in validation
    test_labels = rng.integers(0, 4, 30)
    group = [
        Member(
            f"m{i}",
            pset(random_probs(rng, 30, 4, test_labels), test_labels, "T"),
            pset(random_probs(rng, 60, 4, val_labels), val_labels, "V"),
        )
        for i in range(2)
    ]
    fused = fuse("stacking", group).probs
    assert fused.shape == (30, 4)
    assert np.allclose(fused.sum(axis=1), 1.0) and np.all(fused[:, 3] == 0)


def test_greedy_selects_with_replacement_on_validation_and_breaks_ties_by_member_order():
    labels = np.array([0, 1, 0, 1])
    good = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.4, 0.6]])  # 4/4 right
    bad = np.array([[0.1, 0.9], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])  # 1/4 right
    assert greedy_weights([bad, good], labels).tolist() == [0, 1]  # best member, then no strict improvement
    assert greedy_weights([good, good.copy()], labels).tolist() == [1, 0]  # tie -> the member listed first
    # with replacement: A (2/4, first of a tie), then B (A+B: 3/4), then A again (2A+B: 4/4), then stop
    p_a, p_b = np.array([0.58, 0.22, 0.31, 0.89]), np.array([0.26, 0.99, 0.93, 0.31])
    a, b = np.stack([1 - p_a, p_a], axis=1), np.stack([1 - p_b, p_b], axis=1)
    assert greedy_weights([a, b], np.array([0, 0, 1, 1])).tolist() == [2, 1]
    assert greedy_weights([a, b], np.array([0, 0, 1, 1]), rounds=2).tolist() == [1, 1]


def test_greedy_fused_probabilities_are_the_weighted_mean():
    group, _, _ = members(seed=8)
    result = fuse("greedy", group)
    weights = np.array([result.details["weights"][m.name] for m in group])
    assert weights.sum() == pytest.approx(1.0)
    assert np.allclose(result.probs, np.tensordot(weights, np.stack([m.test.probs for m in group]), axes=1))


# --------------------------------------------------------------------------- refusing misaligned members


def test_fusion_refuses_a_different_test_digest():
    group, labels, _ = members(seed=2, m=2, signals=(1.0, 1.0))
    other = Member("m1", pset(group[1].test.probs, labels, "OTHER"), group[1].val)
    for rule in FUSION_RULES:
        with pytest.raises(FusionMismatchError, match="split_digest"):
            fuse(rule, [group[0], other])


def test_fusion_refuses_a_different_order_of_the_same_examples():
    group, labels, _ = members(seed=2, m=2, signals=(1.0, 1.0))
    order = np.random.default_rng(0).permutation(len(labels))
    reordered = Member("m1", pset(group[1].test.probs[order], labels[order], "T", indices=order), group[1].val)
    with pytest.raises(FusionMismatchError, match="indices differ"):
        fuse("product", [group[0], reordered])


def test_fusion_refuses_different_shapes_and_misaligned_validation():
    group, labels, _ = members(seed=2, m=2, signals=(1.0, 1.0))
    with pytest.raises(FusionMismatchError, match="shape"):
        check_aligned([group[0].test, pset(group[1].test.probs[:, :3], labels, "T")], ["a", "b"])
    shifted = Member("m1", group[1].test, pset(group[1].val.probs, group[1].val.labels, "V2"))
    assert fuse("product", [group[0], shifted]).probs.shape == group[0].test.probs.shape  # test-only rule: fine
    for rule in ("stacking", "greedy"):
        with pytest.raises(FusionMismatchError, match="validation"):
            fuse(rule, [group[0], shifted])
    no_val = Member("m1", group[1].test, None)
    with pytest.raises(FusionMismatchError, match="val_probs"):
        fuse("stacking", [group[0], no_val])
    with pytest.raises(FusionMismatchError, match="at least 2"):
        fuse("mean", [group[0]])


def test_prediction_set_round_trip(tmp_path):
    probs = np.array([[0.2, 0.8], [0.7, 0.3]])
    np.savez_compressed(
        tmp_path / "test_probs.npz",
        probs=probs,
        labels=np.array([1, 0]),
        indices=np.arange(2),
        split_digest=np.array("abc123"),
    )
    loaded = PredictionSet.load(tmp_path / "test_probs.npz")
    assert loaded.split_digest == "abc123" and loaded.predictions.tolist() == [1, 0]
    assert np.array_equal(loaded.probs, probs)
