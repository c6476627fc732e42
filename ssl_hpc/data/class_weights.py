"""Class weights for the cross-entropy, computed from the labelled training counts.

``inverse_count_complement`` is the thesis's rule w_i = (t - e_i) / t (t: labelled examples,
e_i: examples of class i). The others are the usual ones: ``inverse_frequency`` is
scikit-learn's "balanced" t / (K e_i); ``effective_number`` is Cui et al. (2019),
(1 - beta) / (1 - beta^e_i), scaled to sum to K.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _inverse_count_complement(counts: np.ndarray, beta: float) -> np.ndarray:
    total = counts.sum()
    return (total - counts) / total


def _inverse_frequency(counts: np.ndarray, beta: float) -> np.ndarray:
    return counts.sum() / (len(counts) * counts)


def _effective_number(counts: np.ndarray, beta: float) -> np.ndarray:
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights * len(counts) / weights.sum()


CLASS_WEIGHT_RULES: dict[str, Callable[[np.ndarray, float], np.ndarray] | None] = {
    "none": None,
    "inverse_count_complement": _inverse_count_complement,
    "inverse_frequency": _inverse_frequency,
    "effective_number": _effective_number,
}


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels), minlength=num_classes)


def class_weights(rule: str, counts: np.ndarray, beta: float = 0.999) -> np.ndarray | None:
    """Weights per class, or ``None`` for the unweighted loss."""
    if rule not in CLASS_WEIGHT_RULES:
        raise ValueError(f"unknown class weight rule {rule!r}; accepted: {', '.join(CLASS_WEIGHT_RULES)}")
    function = CLASS_WEIGHT_RULES[rule]
    if function is None:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if np.any(counts <= 0):
        missing = np.flatnonzero(counts <= 0).tolist()
        raise ValueError(f"class weight rule {rule!r} needs every class in the labelled set; classes {missing} have none")
    return function(counts, beta)
