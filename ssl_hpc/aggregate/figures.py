"""The aggregation's plots (PNG, beside the tables): per table, the per-class accuracies, the
validation curves of its single models and the confusion matrices; per dataset (and size and class
weight), accuracy against the label budget. The drawing itself lives in
:mod:`ssl_hpc.evaluate.aggregate_plots`; this module picks what to draw from the tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_hpc.aggregate.columns import Naming
from ssl_hpc.aggregate.table import TableResult
from ssl_hpc.evaluate import stats
from ssl_hpc.evaluate.aggregate_plots import (
    plot_accuracy_vs_labels,
    plot_class_bars,
    plot_confusion_grid,
    plot_val_curves,
)
from ssl_hpc.tracking import SweepTracker


def metric_history(tracker: SweepTracker, run_id: str, metric: str) -> tuple[list[int], list[float]]:
    latest: dict[int, tuple[int, float]] = {}
    for entry in tracker.metric_history(run_id, metric):
        if entry.step not in latest or entry.timestamp >= latest[entry.step][0]:
            latest[entry.step] = (entry.timestamp, entry.value)
    steps = sorted(latest)
    return steps, [latest[s][1] for s in steps]


def table_plots(tracker: SweepTracker, table: TableResult, folder: Path, sweep_name: str) -> list[Path]:
    suffix = table.stem.removeprefix("table_")
    title = f"{sweep_name}: {table.dataset}, labels {table.label_fraction}, cw {table.class_weight}"
    class_rows = table.means.iloc[:-2]
    paths = [
        plot_class_bars(
            class_rows,
            folder / f"per_class_{suffix}.png",
            table.class_names,
            f"per-class test accuracy — {title}",
            table.stds.iloc[:-2],
        )
    ]
    curves = {
        c.name: [metric_history(tracker, r.run_id, "val_acc") for r in c.records] for c in table.columns if c.records
    }
    if any(epochs for per_seed in curves.values() for epochs, _ in per_seed):
        paths.append(plot_val_curves(curves, folder / f"val_curves_{suffix}.png", f"validation accuracy — {title}"))
    matrices = {}
    for column in table.columns:
        found = [o.matrix for o in column.outcomes.values() if o.matrix is not None]
        if found:
            matrices[column.name + (f" (sum of {len(found)} seeds)" if len(found) > 1 else "")] = np.sum(found, axis=0)
    if matrices:
        names = table.class_names or [str(i) for i in range(table.num_classes())]
        paths.append(
            plot_confusion_grid(
                matrices, names, folder / f"confusion_{suffix}.png", f"confusion matrices (test) — {title}"
            )
        )
    return paths


def budget_plots(tables: Sequence[TableResult], naming: Naming, folder: Path, sweep_name: str) -> list[Path]:
    """Accuracy against the label budget, one line per model, per dataset (and class weight)."""
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    titles = {}
    for table in tables:
        key = naming.series_suffix(table.dataset, table.size, table.class_weight)
        titles[key] = f"{sweep_name}: {table.dataset} ({table.size} px), cw {table.class_weight}"
        for column in table.columns:
            n_labels = stats.mean_std([o.n_labels for o in column.outcomes.values()])[0]
            if math.isnan(n_labels):
                continue
            mean, std = stats.mean_std([100 * v for v in column.values("acc")])
            series[key][column.name].append((n_labels, table.label_fraction, mean, std))
    paths = []
    for key, lines in series.items():
        if max(len(points) for points in lines.values()) < 2:
            continue  # one label budget: nothing to draw a line through
        paths.append(
            plot_accuracy_vs_labels(
                lines, folder / f"accuracy_vs_labels_{key}.png", f"test accuracy against labels — {titles[key]}"
            )
        )
    return paths
