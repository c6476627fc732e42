"""Class weights for the cross-entropy, computed from the labelled training counts.

``inverse_count_complement`` is the thesis's rule w_i = (t - e_i) / t (t: labelled examples,
e_i: examples of class i). The others are the usual ones: ``inverse_frequency`` is
scikit-learn's "balanced" t / (K e_i); ``effective_number`` is Cui et al. (2019),
(1 - beta) / (1 - beta^e_i), scaled to sum to K. ``critical:<class>=<w>`` weighs one class w and
the others 1 (the pulmonary report's COVID weight sweep); the class is a name or an index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

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


CRITICAL = re.compile(r"^critical:(?P<cls>[^=]+)=(?P<weight>\d+(\.\d+)?)$")


def is_known_rule(rule: str) -> bool:
    return rule in CLASS_WEIGHT_RULES or CRITICAL.match(rule) is not None


def critical_weights(rule: str, class_names: Sequence[str]) -> np.ndarray:
    match = CRITICAL.match(rule)
    if match is None:
        raise ValueError(f"{rule!r} is not of the form critical:<class>=<weight>")
    target, weight = match["cls"], float(match["weight"])
    if target in class_names:
        index = list(class_names).index(target)
    elif target.isdigit() and int(target) < len(class_names):
        index = int(target)
    else:
        raise ValueError(
            f"class weight {rule!r}: no class {target!r}; accepted: {', '.join(class_names)} "
            f"or an index below {len(class_names)}"
        )
    weights = np.ones(len(class_names))
    weights[index] = weight
    return weights


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels), minlength=num_classes)


def class_weights(
    rule: str, counts: np.ndarray, beta: float = 0.999, class_names: Sequence[str] | None = None
) -> np.ndarray | None:
    """Weights per class, or ``None`` for the unweighted loss."""
    if CRITICAL.match(rule):
        return critical_weights(rule, class_names or [str(i) for i in range(len(counts))])
    if rule not in CLASS_WEIGHT_RULES:
        raise ValueError(
            f"unknown class weight rule {rule!r}; accepted: {', '.join(CLASS_WEIGHT_RULES)}, "
            "or critical:<class>=<weight>"
        )
    function = CLASS_WEIGHT_RULES[rule]
    if function is None:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if np.any(counts <= 0):
        missing = np.flatnonzero(counts <= 0).tolist()
        raise ValueError(
            f"class weight rule {rule!r} needs every class in the labelled set; classes {missing} have none"
        )
    return function(counts, beta)
