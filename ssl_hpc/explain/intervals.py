"""How far a CAM score averaged over a few hundred images can be trusted: a bootstrap interval over images.

A run's CAM scores are means over one fixed, seeded set of test images (``cam.max_images``). Another set
of images from the same test distribution would give another mean; :func:`bootstrap_interval` says by
how much, by resampling the per-image values with replacement (the percentile bootstrap, Efron &
Tibshirani 1993, ch. 13). It covers image sampling only, not training noise (another seed, another map).

It lives here rather than in :mod:`ssl_hpc.evaluate.stats`, whose bootstrap resamples test examples of
classification scores: ``ssl_hpc.explain`` and ``ssl_hpc.evaluate`` are independent layers
(``pyproject.toml``, docs/conventions.md) and may not import each other.
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95
# Resampled means are computed this many values at a time: bounded memory whatever cam.max_images is.
_CHUNK_VALUES = 4_000_000


def bootstrap_interval(
    values: np.ndarray, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of ``values`` (one per image).

    NaN values (images where the score is undefined) are left out, as they are from the mean itself.
    ``resamples`` means of ``n`` values drawn with replacement (numpy's ``default_rng(seed)``: the same
    values and seed give the same interval); the interval is their ``(1 - level) / 2`` and
    ``(1 + level) / 2`` percentiles (numpy's linear interpolation). One value gives a zero-width interval,
    none gives ``(nan, nan)``.
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level} is outside (0, 1)")
    if resamples < 1:
        raise ValueError(f"resamples {resamples} must be at least 1")
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    array = array[~np.isnan(array)]
    count = array.size
    if count == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _CHUNK_VALUES // count)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = array[rng.integers(0, count, size=(stop - start, count))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def with_intervals(prefix: str, per_image: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """``{prefix}{score}_ci_low`` and ``_ci_high`` for each score's per-image values (NaN where undefined)."""
    metrics: dict[str, float] = {}
    for score, values in per_image.items():
        low, high = bootstrap_interval(values, seed=seed)
        metrics[f"{prefix}{score}_ci_low"] = low
        metrics[f"{prefix}{score}_ci_high"] = high
    return metrics
