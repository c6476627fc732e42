"""Statistics against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssl_hpc.evaluate.stats import (
    bootstrap_ci,
    format_p,
    mcnemar,
    mean_std,
    paired_bootstrap,
    resample_weights,
    score,
    weighted_scores,
)


def test_mean_std_over_seeds():
    mean, std = mean_std([90.0, 92.0, 94.0])
    assert mean == pytest.approx(92.0)
    assert std == pytest.approx(2.0)  # sqrt(((-2)^2 + 0 + 2^2) / (3 - 1))
    mean, std = mean_std([88.5])
    assert mean == 88.5 and math.isnan(std)
    assert mean_std([1.0, float("nan"), 3.0]) == pytest.approx((2.0, math.sqrt(2.0)))


def test_scores_by_hand():
    labels = np.array([0, 0, 0, 1, 2, 2])
    predictions = np.array([0, 0, 1, 1, 2, 0])
    assert score(labels, predictions, "accuracy") == pytest.approx(4 / 6)
    # recalls: 2/3, 1/1, 1/2 -> mean 13/18
    assert score(labels, predictions, "mean_class_accuracy") == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # several seeds: the mean of the seeds' scores
    both = np.stack([predictions, labels])
    assert score(labels, both, "accuracy") == pytest.approx((4 / 6 + 1) / 2)
    # a class absent from the labels is ignored by the mean class accuracy
    assert score(labels, predictions, "mean_class_accuracy", num_classes=4) == pytest.approx(13 / 18)


def test_weighted_scores_count_repeated_examples():
    labels = np.array([0, 1, 1])
    predictions = np.array([0, 1, 0])
    weights = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    result = weighted_scores(labels, predictions, weights, "accuracy")
    assert result[:, 0].tolist() == [1.0, 0.0]
    classwise = weighted_scores(labels, predictions, weights, "mean_class_accuracy")
    assert classwise[0, 0] == pytest.approx(1.0)  # class 0: 2/2, class 1: 1/1
    assert classwise[1, 0] == pytest.approx(0.0)  # class 0 absent, class 1: 0/3


def test_resample_weights_are_seeded_draws_of_n_examples():
    first = resample_weights(50, 200, seed=3)
    assert first.shape == (200, 50)
    assert np.all(first.sum(axis=1) == 50)
    assert np.array_equal(first, resample_weights(50, 200, seed=3))
    assert not np.array_equal(first, resample_weights(50, 200, seed=4))


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 400)
    predictions = np.where(rng.random(400) < 0.8, labels, (labels + 1) % 3)
    observed = score(labels, predictions)
    low, high = bootstrap_ci(labels, predictions, n_resamples=1000, seed=1)
    assert low < observed < high
    # the normal approximation of a proportion's interval: +-1.96 sqrt(p(1-p)/n)
    half = 1.96 * math.sqrt(observed * (1 - observed) / 400)
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert (low, high) == bootstrap_ci(labels, predictions, n_resamples=1000, seed=1)  # pure: seeded
    assert bootstrap_ci(labels, labels, n_resamples=100) == (1.0, 1.0)
    low_mca, high_mca = bootstrap_ci(labels, predictions, "mean_class_accuracy", n_resamples=300)
    assert low_mca < score(labels, predictions, "mean_class_accuracy") < high_mca


def test_mcnemar_exact_by_hand():
    # b = 1 (reference right, model wrong), c = 5 (the reverse), 4 concordant pairs
    reference = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=bool)
    model = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    result = mcnemar(reference, model)
    assert (result.b, result.c, result.method) == (1, 5, "exact")
    # two-sided exact binomial: 2 * P(X <= 1 | n=6, p=1/2) = 2 * (1 + 6) / 64
    assert result.p_value == pytest.approx(2 * 7 / 64)


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    b, c = 10, 30
    reference = np.array([True] * b + [False] * c + [True] * 50)
    model = np.array([False] * b + [True] * c + [True] * 50)
    result = mcnemar(reference, model)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)  # 9.025
    assert result.method == "chi2" and result.statistic == pytest.approx(statistic)
    # the chi-square (1 degree of freedom) survival function is erfc(sqrt(x / 2))
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(statistic / 2)))


def test_mcnemar_identical_models_and_symmetry():
    correct = np.array([True, False, True])
    assert mcnemar(correct, correct).p_value == 1.0
    a = np.array([True] * 3 + [False] * 8)
    b = np.array([False] * 3 + [True] * 8)
    assert mcnemar(a, b).p_value == pytest.approx(mcnemar(b, a).p_value)
    with pytest.raises(ValueError):
        mcnemar(a, b[:-1])


def test_paired_bootstrap():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 300)
    weak = np.where(rng.random(300) < 0.6, labels, 1 - labels)
    strong = np.where(rng.random(300) < 0.95, labels, 1 - labels)
    same = paired_bootstrap(labels, weak, weak, n_resamples=200)
    assert same.difference == 0 and same.p_value == 1.0
    better = paired_bootstrap(labels, weak, strong, n_resamples=500, seed=1)
    assert better.difference == pytest.approx(score(labels, strong) - score(labels, weak))
    assert better.ci_low > 0 and better.p_value < 0.01
    # several seeds per model: the seed-averaged difference
    seeds = paired_bootstrap(labels, np.stack([weak, weak]), np.stack([strong, weak]), n_resamples=200)
    assert seeds.difference == pytest.approx((score(labels, strong) - score(labels, weak)) / 2)


def test_format_p():
    assert format_p(0.0001) == "<0.001" and format_p(0.25) == "0.250" and format_p(float("nan")) == ""


def test_holm_matches_a_hand_computation():
    from ssl_hpc.evaluate.stats import holm

    # m = 4 (NaN left out): sorted 0.01, 0.02, 0.03, 0.04 times 4, 3, 2, 1 = 0.04, 0.06, 0.06, 0.04; monotone: 0.06
    adjusted = holm([0.03, 0.01, float("nan"), 0.04, 0.02])
    assert np.allclose(adjusted[[1, 4, 0, 3]], [0.04, 0.06, 0.06, 0.06])
    assert np.isnan(adjusted[2])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1


def test_seed_paired_t_test_matches_scipy():
    from scipy.stats import ttest_rel

    from ssl_hpc.evaluate.stats import seed_paired_t_test

    reference = [0.81, 0.83, 0.80, 0.84, 0.82]
    model = [0.84, 0.85, 0.81, 0.88, 0.83]
    ours = seed_paired_t_test(reference, model)
    expected = ttest_rel(model, reference)
    assert ours.statistic == pytest.approx(expected.statistic) and ours.p_value == pytest.approx(expected.pvalue)
    assert np.isnan(seed_paired_t_test([0.8], [0.9]).p_value)  # one seed: no test across seeds


def test_seed_interval_covers_training_noise_that_the_example_bootstrap_ignores():
    """Three seeds that disagree by several points on the same 400 test examples: the hierarchical interval
    (seeds, then examples) must be wider than the example-only bootstrap, and equal it with one seed."""
    from ssl_hpc.evaluate.stats import bootstrap_ci, hierarchical_bootstrap_ci

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    predictions = np.stack([np.where(rng.random(400) < accuracy, labels, 1 - labels) for accuracy in (0.7, 0.8, 0.9)])
    example_low, example_high = bootstrap_ci(labels, predictions, seed=3)
    seed_low, seed_high = hierarchical_bootstrap_ci(labels, predictions, seed=3)
    assert seed_high - seed_low > 2 * (example_high - example_low)
    assert seed_low < predictions.__eq__(labels).mean() < seed_high
    one = predictions[:1]
    assert hierarchical_bootstrap_ci(labels, one, seed=3) == pytest.approx(bootstrap_ci(labels, one, seed=3))
