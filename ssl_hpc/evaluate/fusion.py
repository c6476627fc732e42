"""Fusion ensembles: several models' class probabilities on the same examples become one prediction.

Every rule is a pure function of class-probability arrays. The rules that are *fit* (``stacking``,
``greedy``) receive the members' validation probabilities and validation labels, never anything about
the test split but its probabilities: :func:`fuse` does not even pass the test labels on, so they
cannot leak into a fitted ensemble.

Rules (``FUSION_RULES``):

- ``product``: the thesis's rule, argmax of the product of class probabilities, computed as the sum of
  ``log(clip(p, eps))`` so a zero probability neither gives ``-inf`` ties nor NaN. The fused
  probabilities are the normalised product (a softmax of the summed log-probabilities).
- ``mean``: the mean of the members' probabilities.
- ``vote``: majority vote of the members' predicted classes. Ties are broken by the summed
  probability of the tied classes, then by the lowest class index. The fused "probabilities" are
  ``(votes + summed_probs / (M + 1))`` normalised: their argmax is exactly the vote with that tie-break.
- ``max_confidence``: for each example the member whose top probability is highest decides (its
  probabilities are the fused ones); equal confidences go to the member listed first.
- ``stacking``: a multinomial logistic regression (the meta-model) fit on the concatenated member
  validation probabilities and the validation labels only, then applied to the test probabilities.
- ``greedy``: Caruana et al.'s forward selection *with replacement* of members on validation: start
  from nothing, repeatedly add the member whose addition maximises the validation score (accuracy by
  default, or mean class accuracy) of the *mean* of the selected members' probabilities; stop when no
  addition strictly improves it or after ``rounds`` additions. Ties go to the member listed first.
  The weights (selection counts) are then applied to the test probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssl_hpc.evaluate.metrics import prediction_mean_class_accuracy

FUSION_RULES = ("product", "mean", "vote", "max_confidence", "stacking", "greedy")
FITTED_RULES = ("stacking", "greedy")
GREEDY_METRICS = ("accuracy", "mean_class_accuracy")
EPS = 1e-12


class FusionMismatchError(ValueError):
    """Members' predictions are not for the same examples in the same order (or are malformed)."""


@dataclass(frozen=True)
class PredictionSet:
    """Class probabilities of one model on one split, with the fingerprint of the examples."""

    probs: np.ndarray  # float [N, K]
    labels: np.ndarray  # int [N]
    indices: np.ndarray  # int [N]
    split_digest: str

    @classmethod
    def load(cls, path: Path) -> PredictionSet:
        """Reads a ``test_probs.npz`` / ``val_probs.npz`` artifact (keys probs, labels, indices, split_digest)."""
        with np.load(path, allow_pickle=False) as data:
            probs = np.asarray(data["probs"], dtype=np.float64)
            labels = np.asarray(data["labels"]).astype(np.int64).reshape(-1)
            indices = np.asarray(data["indices"]).astype(np.int64) if "indices" in data else np.arange(len(labels))
            digest = str(data["split_digest"][()]) if "split_digest" in data else ""
        if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
            raise FusionMismatchError(f"{path}: probs {probs.shape} and labels {labels.shape} do not match")
        return cls(probs, labels, indices, digest)

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass(frozen=True)
class FusionResult:
    """Fused test probabilities (their argmax is the fused prediction) and what the rule decided."""

    probs: np.ndarray
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


# --------------------------------------------------------------------------- alignment


def check_aligned(sets: Sequence[PredictionSet], names: Sequence[str], split: str = "test") -> None:
    """Raises :class:`FusionMismatchError` unless every set is for the same examples in the same order.

    Same split digest (a fingerprint of the images, labels and their order), same indices, same labels
    and the same number of classes.
    """
    if len(sets) != len(names):
        raise ValueError("one name per prediction set")
    if len(sets) < 2:
        raise FusionMismatchError(f"a fusion needs at least 2 members, got {len(sets)}")
    first, first_name = sets[0], names[0]
    for other, name in zip(sets[1:], names[1:]):
        problem = None
        if not first.split_digest or not other.split_digest:
            problem = "a member has no split_digest"
        elif other.split_digest != first.split_digest:
            problem = f"split_digest {other.split_digest} != {first.split_digest}"
        elif other.probs.shape != first.probs.shape:
            problem = f"probabilities of shape {other.probs.shape} != {first.probs.shape}"
        elif not np.array_equal(other.indices, first.indices):
            problem = "indices differ (different examples or order)"
        elif not np.array_equal(other.labels, first.labels):
            problem = "labels differ"
        if problem:
            raise FusionMismatchError(
                f"refusing to fuse {split} predictions of {name!r} with {first_name!r}: {problem}; "
                f"members must be predictions for the same {split} examples in the same order"
            )


# --------------------------------------------------------------------------- rules (pure)


def _stack(probs: Sequence[np.ndarray]) -> np.ndarray:
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in probs])  # [M, N, K]
    if stacked.ndim != 3:
        raise ValueError(f"expected M arrays of shape [N, K], got {stacked.shape}")
    return stacked


def product_rule(probs: Sequence[np.ndarray], eps: float = EPS) -> np.ndarray:
    """Normalised product of probabilities via summed ``log(clip(p, eps))``; never NaN."""
    log_sum = np.log(np.clip(_stack(probs), eps, 1.0)).sum(axis=0)
    log_sum -= log_sum.max(axis=1, keepdims=True)
    fused = np.exp(log_sum)
    return fused / fused.sum(axis=1, keepdims=True)


def mean_rule(probs: Sequence[np.ndarray]) -> np.ndarray:
    return _stack(probs).mean(axis=0)


def vote_rule(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Vote shares with the tie-break (summed probability, then lowest class) encoded in the scores."""
    stacked = _stack(probs)
    members, _, classes = stacked.shape
    votes = np.zeros(stacked.shape[1:], dtype=np.float64)
    for member in stacked:
        votes += np.eye(classes)[member.argmax(axis=1)]
    # summed probability / (M + 1) < 1, so it only orders classes with the same number of votes;
    # exactly equal scores leave argmax's lowest index.
    scores = votes + stacked.sum(axis=0) / (members + 1)
    return scores / scores.sum(axis=1, keepdims=True)


def max_confidence_rule(probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(fused probabilities, index of the deciding member per example)."""
    stacked = _stack(probs)
    deciding = stacked.max(axis=2).argmax(axis=0)  # ties -> first member
    return stacked[deciding, np.arange(stacked.shape[1])], deciding


def _score(labels: np.ndarray, predictions: np.ndarray, metric: str, num_classes: int) -> float:
    if metric == "accuracy":
        return float((predictions == labels).mean())
    if metric == "mean_class_accuracy":
        return prediction_mean_class_accuracy(labels, predictions, num_classes)
    raise ValueError(f"unknown greedy metric {metric!r}; accepted: {', '.join(GREEDY_METRICS)}")


def greedy_weights(
    val_probs: Sequence[np.ndarray], val_labels: np.ndarray, metric: str = "accuracy", rounds: int = 10
) -> np.ndarray:
    """Selection counts per member (forward selection with replacement on validation; see module doc)."""
    stacked = _stack(val_probs)
    members, _, classes = stacked.shape
    val_labels = np.asarray(val_labels).astype(np.int64)
    counts = np.zeros(members, dtype=np.int64)
    total = np.zeros(stacked.shape[1:], dtype=np.float64)
    best = -np.inf
    for _ in range(rounds):
        scores = [
            _score(val_labels, ((total + stacked[m]) / (counts.sum() + 1)).argmax(axis=1), metric, classes)
            for m in range(members)
        ]
        choice = int(np.argmax(scores))  # ties -> first member
        if counts.sum() > 0 and not scores[choice] > best:
            break
        counts[choice] += 1
        total += stacked[choice]
        best = scores[choice]
    return counts


def fit_stacking(val_probs: Sequence[np.ndarray], val_labels: np.ndarray, num_classes: int, c: float = 1.0):
    """The logistic-regression meta-model on concatenated member validation probabilities."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([np.asarray(p, dtype=np.float64) for p in val_probs], axis=1)
    labels = np.asarray(val_labels).astype(np.int64)
    if len(np.unique(labels)) < 2:
        raise FusionMismatchError("stacking needs at least two classes in the validation labels")
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(features, labels)
    model.num_classes_ = num_classes
    return model


def apply_stacking(model, test_probs: Sequence[np.ndarray]) -> np.ndarray:
    features = np.concatenate([np.asarray(p, dtype=np.float64) for p in test_probs], axis=1)
    seen = model.predict_proba(features)
    fused = np.zeros((features.shape[0], model.num_classes_), dtype=np.float64)
    fused[:, model.classes_] = seen  # classes absent from validation keep probability 0
    return fused


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class Member:
    """One model of a fusion: its test predictions and (for fitted rules) its validation predictions."""

    name: str
    test: PredictionSet
    val: PredictionSet | None = None


def fuse(
    rule: str,
    members: Sequence[Member],
    *,
    greedy_metric: str = "accuracy",
    greedy_rounds: int = 10,
    stacking_c: float = 1.0,
) -> FusionResult:
    """Fuses the members' test predictions with ``rule``.

    Refuses (:class:`FusionMismatchError`) members whose test (or, for fitted rules, validation)
    predictions are not for the same examples in the same order. Test labels are never passed to a
    rule: only test probabilities are.
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; accepted: {', '.join(FUSION_RULES)}")
    names = [member.name for member in members]
    check_aligned([member.test for member in members], names, "test")
    test_probs = [member.test.probs for member in members]
    if rule == "product":
        return FusionResult(product_rule(test_probs))
    if rule == "mean":
        return FusionResult(mean_rule(test_probs))
    if rule == "vote":
        return FusionResult(vote_rule(test_probs))
    if rule == "max_confidence":
        fused, deciding = max_confidence_rule(test_probs)
        share = {name: float((deciding == i).mean()) for i, name in enumerate(names)}
        return FusionResult(fused, {"deciding_share": share})

    missing = [member.name for member in members if member.val is None]
    if missing:
        raise FusionMismatchError(
            f"rule {rule!r} needs validation predictions (val_probs.npz); missing for {', '.join(missing)}"
        )
    vals = [member.val for member in members]  # type: ignore[misc]
    check_aligned(vals, names, "validation")
    val_probs, val_labels = [v.probs for v in vals], vals[0].labels
    if rule == "stacking":
        model = fit_stacking(val_probs, val_labels, test_probs[0].shape[1], c=stacking_c)
        return FusionResult(
            apply_stacking(model, test_probs), {"coef": model.coef_.copy(), "intercept": model.intercept_.copy()}
        )
    counts = greedy_weights(val_probs, val_labels, metric=greedy_metric, rounds=greedy_rounds)
    weights = counts / counts.sum()
    fused = np.tensordot(weights, _stack(test_probs), axes=1)
    return FusionResult(fused, {"weights": {name: float(w) for name, w in zip(names, weights)}})
