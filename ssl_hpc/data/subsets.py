"""Label budgets: which training examples keep their label.

Subsets are stratified and seeded, and *nested*: for one seed, each class's examples are ranked by
one random permutation and a budget keeps a prefix of that ranking, so the 25 % subset lies inside
the 50 % subset. Comparing fractions then measures the number of labels, not a different draw.
"""

from __future__ import annotations

import math

import numpy as np


def label_subset(
    labels: np.ndarray,
    seed: int,
    fraction: float | None = None,
    per_class: int | None = None,
) -> np.ndarray:
    """Sorted indices of the labelled examples kept under the budget.

    ``fraction`` keeps ``round(fraction * n_c)`` examples of each class (at least one);
    ``per_class`` keeps ``min(per_class, n_c)``. With neither, every example is kept.
    """
    labels = np.asarray(labels)
    if fraction is not None and per_class is not None and fraction != 1.0:
        raise ValueError("give either fraction or per_class, not both")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if per_class is None and (fraction is None or fraction == 1.0):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        ranked = members[rng.permutation(len(members))]
        if per_class is not None:
            count = min(per_class, len(members))
        else:
            count = max(1, math.floor(fraction * len(members) + 0.5))
        kept.append(ranked[:count])
    return np.sort(np.concatenate(kept))
