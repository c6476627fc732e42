"""Statistics of one column: intervals of its seed-averaged scores, and the test against the reference.

Intervals: with one seed, a bootstrap of test examples (test sampling only: the tables say so); with
several, a hierarchical bootstrap (seeds, then examples), which also covers training noise. The same
resampling weights serve every column of a given test-set size, so columns are compared on the same
resamples. The test compares a column with the reference column of the same backbone on the seeds both
have, on the same test examples (same ``split_digest``): with several seeds a paired t-test of per-seed
accuracy across seeds (is the difference larger than retraining with another seed moves it?); with one
seed McNemar's test on the examples. McNemar per seed and the paired bootstrap of examples are kept
beside it. The table applies Holm's correction over its comparisons (:mod:`ssl_hpc.aggregate.table`).
The computations themselves live in :mod:`ssl_hpc.evaluate.stats`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssl_hpc.aggregate.columns import ColumnData
from ssl_hpc.config import AggregateSettings
from ssl_hpc.evaluate import stats


def column_statistics(
    column: ColumnData, reference: ColumnData | None, settings: AggregateSettings, num_classes: int, weights_cache: dict
) -> dict:
    """Bootstrap intervals of the seed-averaged scores and the paired test against the reference."""
    row: dict = {}
    seeds = [s for s in sorted(column.outcomes) if column.outcomes[s].predictions is not None]
    digests = {column.outcomes[s].digest for s in seeds}
    if seeds and len(digests) == 1:
        labels = column.outcomes[seeds[0]].labels
        predictions = np.stack([column.outcomes[s].predictions for s in seeds])
        weights = _weights(len(labels), settings, weights_cache)
        interval = stats.hierarchical_bootstrap_ci if len(seeds) > 1 else stats.bootstrap_ci
        for score in stats.SCORES:
            low, high = interval(
                labels,
                predictions,
                score,
                confidence=settings.confidence,
                seed=settings.stats_seed,
                num_classes=num_classes,
                weights=weights,
            )
            row[f"{score}_ci_low"], row[f"{score}_ci_high"] = 100 * low, 100 * high
        row["interval_covers"] = "seeds and test examples" if len(seeds) > 1 else "test examples only"
    if reference is None or column is reference:
        return row
    shared = [
        s
        for s in seeds
        if s in reference.outcomes
        and reference.outcomes[s].predictions is not None
        and reference.outcomes[s].digest == column.outcomes[s].digest
    ]
    if not shared:
        return row
    tests = []
    for seed in shared:
        ours, theirs = column.outcomes[seed], reference.outcomes[seed]
        result = stats.mcnemar(theirs.predictions == theirs.labels, ours.predictions == ours.labels)
        tests.append(
            {
                "seed": seed,
                "b_reference_only": result.b,
                "c_model_only": result.c,
                "statistic": result.statistic,
                "p_value": result.p_value,
                "method": f"mcnemar_{result.method}",
            }
        )
    row["paired_tests"] = tests
    labels = column.outcomes[shared[0]].labels
    if len(shared) == 1:
        row["paired_test"], row["p_value"] = tests[0]["method"], tests[0]["p_value"]
    else:
        paired = stats.paired_bootstrap(
            labels,
            np.stack([reference.outcomes[s].predictions for s in shared]),
            np.stack([column.outcomes[s].predictions for s in shared]),
            "accuracy",
            confidence=settings.confidence,
            num_classes=num_classes,
            weights=_weights(len(labels), settings, weights_cache),
        )
        row["p_examples"] = paired.p_value  # test sampling only, seeds averaged
        across = stats.seed_paired_t_test(
            [stats.score(labels, reference.outcomes[s].predictions) for s in shared],
            [stats.score(labels, column.outcomes[s].predictions) for s in shared],
        )
        row["paired_test"], row["p_value"] = "paired_t_over_seeds", across.p_value
    row["paired_seeds"] = len(shared)
    return row


def _weights(n: int, settings: AggregateSettings, cache: dict) -> np.ndarray:
    if n not in cache:
        cache[n] = stats.resample_weights(n, settings.bootstrap_resamples, settings.stats_seed)
    return cache[n]


def reference_for(column: ColumnData, references: Sequence[ColumnData]) -> ColumnData | None:
    """The reference column with the same backbone if there is one, else the first."""
    if not references:
        return None
    return next((r for r in references if r.backbone == column.backbone), references[0])
