"""Statistics over seeds and test examples. Pure functions of arrays, seeded where random.

- :func:`mean_std`: mean and sample standard deviation (ddof=1) over seeds; std is NaN for one seed.
- :func:`bootstrap_ci`: percentile bootstrap interval of a score averaged over seeds, resampling *test
  examples* (the same resampled examples for every seed, since all seeds share one test split).
- :func:`mcnemar`: McNemar's test on paired per-example correctness of two models on the same
  examples: exact two-sided binomial test when there are fewer than 25 discordant pairs, otherwise
  the chi-square statistic with continuity correction.
- :func:`paired_bootstrap`: the paired bootstrap of the difference of two models' seed-averaged
  scores on the same examples, with a two-sided p-value.
- :func:`hierarchical_bootstrap_ci`: the interval that covers *training noise and test sampling*:
  seeds resampled, then test examples. With several seeds this is the interval to publish: the two
  above ignore that another seed would have trained another model.
- :func:`seed_paired_t_test`: the comparison of two models across seeds, paired by seed (the same seed
  draws the same label subset for both), and :func:`holm` for the many comparisons of one table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCORES = ("accuracy", "mean_class_accuracy")
MCNEMAR_EXACT_BELOW = 25


def mean_std(values) -> tuple[float, float]:
    """(mean, sample std with ddof=1) ignoring NaN; std is NaN with fewer than two values."""
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan"), float("nan")
    std = float(array.std(ddof=1)) if array.size > 1 else float("nan")
    return float(array.mean()), std


def _as_seeds(predictions) -> np.ndarray:
    array = np.asarray(predictions)
    return array[None, :] if array.ndim == 1 else array


def resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """``[B, n]`` counts: how often each example is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_resamples, n))
    flat = (draws + (np.arange(n_resamples) * n)[:, None]).reshape(-1)
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def weighted_scores(
    labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray, score: str, num_classes: int | None = None
) -> np.ndarray:
    """Score of each seed's predictions under each row of example weights: ``[B, S]``.

    ``weights`` of ones gives the plain score. ``mean_class_accuracy`` averages the recall of the
    classes present (with positive weight) in a resample.
    """
    labels = np.asarray(labels).astype(np.int64)
    predictions = _as_seeds(predictions)
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    correct = (predictions == labels[None, :]).astype(np.float64)  # [S, N]
    if score == "accuracy":
        return (weights @ correct.T) / weights.sum(axis=1, keepdims=True)
    if score != "mean_class_accuracy":
        raise ValueError(f"unknown score {score!r}; accepted: {', '.join(SCORES)}")
    classes = num_classes or int(labels.max()) + 1
    one_hot = np.eye(classes)[labels]  # [N, K]
    support = weights @ one_hot  # [B, K]
    result = np.empty((weights.shape[0], predictions.shape[0]))
    for s in range(predictions.shape[0]):
        hits = weights @ (one_hot * correct[s][:, None])  # [B, K]
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan)
        result[:, s] = np.nanmean(recall, axis=1)
    return result


def score(labels, predictions, score: str = "accuracy", num_classes: int | None = None) -> float:
    """The seed-averaged score of ``predictions`` (``[N]`` or ``[S, N]``)."""
    n = len(np.asarray(labels))
    return float(weighted_scores(labels, predictions, np.ones((1, n)), score, num_classes).mean())


def bootstrap_ci(
    labels,
    predictions,
    score: str = "accuracy",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    num_classes: int | None = None,
    weights: np.ndarray | None = None,
    over_seeds: bool = False,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the seed-averaged score, resampling test examples (the same
    examples for every seed: they share one test split) and, ``over_seeds``, the seeds first.

    ``weights`` (from :func:`resample_weights`) can be passed to reuse the same resamples for
    several models of one table; otherwise they are drawn from ``seed``.
    """
    predictions = _as_seeds(predictions)
    n = len(np.asarray(labels))
    if weights is None:
        weights = resample_weights(n, n_resamples, seed)
    per_seed = weighted_scores(labels, predictions, weights, score, num_classes)  # [B, S]
    if over_seeds:
        seed_counts = resample_weights(predictions.shape[0], len(weights), seed + 1)
    else:
        seed_counts = np.ones_like(per_seed)
    present = ~np.isnan(per_seed)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of seeds whose scores are all NaN: NaN
        samples = np.where(present, per_seed * seed_counts, 0.0).sum(axis=1) / (seed_counts * present).sum(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(samples, [alpha, 1.0 - alpha])
    return float(low), float(high)


def hierarchical_bootstrap_ci(labels, predictions, score: str = "accuracy", **options) -> tuple[float, float]:
    """The interval that covers training noise and test sampling: each resample draws the seeds with
    replacement, then the test examples (:func:`bootstrap_ci` with ``over_seeds``). With one seed it equals
    :func:`bootstrap_ci`."""
    return bootstrap_ci(labels, predictions, score, over_seeds=True, **options)


@dataclass(frozen=True)
class McNemar:
    """``b``: the reference right and the model wrong; ``c``: the reverse."""

    b: int
    c: int
    statistic: float
    p_value: float
    method: str  # "exact" | "chi2"


def mcnemar(correct_reference, correct_model, exact_below: int = MCNEMAR_EXACT_BELOW) -> McNemar:
    """McNemar's test of two models' per-example correctness on the same examples."""
    reference = np.asarray(correct_reference, dtype=bool)
    model = np.asarray(correct_model, dtype=bool)
    if reference.shape != model.shape:
        raise ValueError(f"paired test needs the same examples: {reference.shape} != {model.shape}")
    b = int((reference & ~model).sum())
    c = int((~reference & model).sum())
    n = b + c
    if n == 0:
        return McNemar(b, c, 0.0, 1.0, "exact")
    if n < exact_below:
        from scipy.stats import binom

        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return McNemar(b, c, float(min(b, c)), p, "exact")
    from scipy.stats import chi2

    statistic = (abs(b - c) - 1.0) ** 2 / n
    return McNemar(b, c, float(statistic), float(chi2.sf(statistic, 1)), "chi2")


@dataclass(frozen=True)
class PairedBootstrap:
    difference: float  # model minus reference, seed-averaged score
    ci_low: float
    ci_high: float
    p_value: float


def paired_bootstrap(
    labels,
    predictions_reference,
    predictions_model,
    score: str = "accuracy",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    num_classes: int | None = None,
    weights: np.ndarray | None = None,
) -> PairedBootstrap:
    """Bootstrap of ``score(model) - score(reference)`` with the same resampled examples for both.

    Two-sided p-value: ``min(1, 2 * min(P*(d <= 0), P*(d >= 0)))`` with the add-one correction
    ``(1 + count) / (1 + B)``; identical predictions give 1.
    """
    n = len(np.asarray(labels))
    reference, model = _as_seeds(predictions_reference), _as_seeds(predictions_model)
    observed = (
        weighted_scores(labels, model, np.ones((1, n)), score, num_classes).mean()
        - weighted_scores(labels, reference, np.ones((1, n)), score, num_classes).mean()
    )
    if weights is None:
        weights = resample_weights(n, n_resamples, seed)
    differences = weighted_scores(labels, model, weights, score, num_classes).mean(axis=1) - weighted_scores(
        labels, reference, weights, score, num_classes
    ).mean(axis=1)
    differences = differences[~np.isnan(differences)]
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(differences, [alpha, 1.0 - alpha])
    if np.all(differences == 0):
        p = 1.0
    else:
        below = (1 + np.sum(differences <= 0)) / (1 + differences.size)
        above = (1 + np.sum(differences >= 0)) / (1 + differences.size)
        p = min(1.0, 2.0 * min(below, above))
    return PairedBootstrap(float(observed), float(low), float(high), float(p))


@dataclass(frozen=True)
class SeedPairedTest:
    difference: float  # mean over seeds of (model - reference)
    sd: float  # sample standard deviation of the per-seed differences
    n_seeds: int
    statistic: float  # t
    p_value: float  # two-sided; NaN with fewer than two seeds


def seed_paired_t_test(reference_scores, model_scores) -> SeedPairedTest:
    """Student's paired t-test of per-seed scores (``scipy.stats.ttest_rel``'s two-sided test): does the
    model beat the reference beyond what retraining with another seed changes?"""
    reference = np.asarray(reference_scores, dtype=np.float64)
    model = np.asarray(model_scores, dtype=np.float64)
    if reference.shape != model.shape:
        raise ValueError(f"a test paired by seed needs the same seeds: {reference.shape} != {model.shape}")
    differences = model - reference
    count = differences.size
    mean = float(differences.mean()) if count else math.nan
    if count < 2:
        return SeedPairedTest(mean, math.nan, count, math.nan, math.nan)
    sd = float(differences.std(ddof=1))
    if sd == 0:
        statistic = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        return SeedPairedTest(mean, sd, count, statistic, 1.0 if mean == 0 else 0.0)
    from scipy.stats import t

    statistic = mean / (sd / math.sqrt(count))
    return SeedPairedTest(mean, sd, count, statistic, float(2.0 * t.sf(abs(statistic), count - 1)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN left out of the family and kept NaN):
    the i-th smallest of m is multiplied by (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(steps, 1.0)
    return adjusted


def format_p(p: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"
