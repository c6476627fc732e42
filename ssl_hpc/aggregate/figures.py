"""The aggregation's plots (PNG, beside the tables). Per table: the per-class accuracies of its single
models (a heat map), its fusions by rule (a figure of their own, so that 36 fusion columns do not drown
ten models), the validation curves of its single models and the confusion matrices of the reference
and the best models; per dataset (and size and class weight), accuracy against the label budget. The
drawing itself lives in :mod:`ssl_hpc.evaluate.aggregate_plots`; this module picks what to draw from
the tables, and says in every title what is shown, on which data and label budget.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_hpc.aggregate.columns import ColumnData, Naming
from ssl_hpc.aggregate.table import TableResult
from ssl_hpc.evaluate import stats
from ssl_hpc.evaluate.aggregate_plots import (
    plot_accuracy_vs_labels,
    plot_class_heatmap,
    plot_confusion_grid,
    plot_fusion_heatmap,
    plot_val_curves,
)
from ssl_hpc.evaluate.tables import ACCURACY, MEAN_CLASS_ACCURACY
from ssl_hpc.tracking import SweepTracker

BEST_SINGLE = "best single (same mode)"


def metric_history(tracker: SweepTracker, run_id: str, metric: str) -> tuple[list[int], list[float]]:
    latest: dict[int, tuple[int, float]] = {}
    for entry in tracker.metric_history(run_id, metric):
        if entry.step not in latest or entry.timestamp >= latest[entry.step][0]:
            latest[entry.step] = (entry.timestamp, entry.value)
    steps = sorted(latest)
    return steps, [latest[s][1] for s in steps]


def table_title(table: TableResult, sweep_name: str) -> str:
    """Which data and label budget a table's figures show (and over how many seeds)."""
    seeds = max((len(c.outcomes) for c in table.columns), default=1)
    spread = f", mean ± sd over {seeds} seeds" if seeds > 1 else ", 1 seed"
    return (
        f"{sweep_name}: {table.dataset} ({table.size} px), labels {table.label_fraction}, "
        f"class weight {table.class_weight}{spread}"
    )


def table_plots(tracker: SweepTracker, table: TableResult, folder: Path, sweep_name: str) -> list[Path]:
    suffix = table.stem.removeprefix("table_")
    title = table_title(table, sweep_name)
    singles = [c for c in table.columns if c.kind != "fusion"]
    fusions = [c for c in table.columns if c.kind == "fusion"]
    references = [c.name for c in singles if c.kind == "reference"]
    names = [c.name for c in singles]
    paths = [
        plot_class_heatmap(
            table.means[names],
            folder / f"per_class_{suffix}.png",
            table.class_names,
            f"Per-class test accuracy (%) of the single models\n{title}",
            table.stds[names],
            references,
        )
    ]
    if fusions:
        paths.append(_fusion_plot(table, singles, fusions, folder / f"fusions_{suffix}.png", title))
    curves = {c.name: [metric_history(tracker, r.run_id, "val_acc") for r in c.records] for c in singles if c.records}
    if any(epochs for per_seed in curves.values() for epochs, _ in per_seed):
        paths.append(
            plot_val_curves(
                curves,
                folder / f"val_curves_{suffix}.png",
                f"Validation accuracy per epoch (colour: method, line: fine-tune mode)\n{title}",
                reference=references[0] if len(references) == 1 else None,
            )
        )
    matrices = _confusion_panels(table, singles, fusions)
    if matrices:
        names_of_classes = table.class_names or [str(i) for i in range(table.num_classes())]
        roles = ", ".join(key.split("\n", 1)[0] for key in matrices)
        paths.append(
            plot_confusion_grid(
                matrices,
                names_of_classes,
                folder / f"confusion_{suffix}.png",
                f"Test confusion matrices: {roles}\n{title}",
            )
        )
    return paths


def _accuracy(table: TableResult, column: ColumnData) -> float:
    value = float(table.means.loc[ACCURACY, column.name])
    return -math.inf if math.isnan(value) else value


def _confusion_panels(
    table: TableResult, singles: Sequence[ColumnData], fusions: Sequence[ColumnData]
) -> dict[str, np.ndarray]:
    """The reference, the best other single model and the best fusion (by test accuracy): the matrices a
    reader compares, instead of one per column."""
    chosen: list[tuple[str, ColumnData]] = [("reference", c) for c in singles if c.kind == "reference"]
    for role, candidates in (
        ("best model", [c for c in singles if c.kind != "reference"]),
        ("best fusion", list(fusions)),
    ):
        found = [c for c in candidates if any(o.matrix is not None for o in c.outcomes.values())]
        if found:
            chosen.append((role, max(found, key=lambda c: _accuracy(table, c))))
    panels = {}
    for role, column in chosen:
        found = [o.matrix for o in column.outcomes.values() if o.matrix is not None]
        if not found:
            continue
        seeds = f", sum of {len(found)} seeds" if len(found) > 1 else ""
        accuracy = table.means.loc[ACCURACY, column.name]
        panels[f"{role}\n{column.name}\n(accuracy {accuracy:.1f} %{seeds})"] = np.sum(found, axis=0)
    return panels


def _fusion_row(name: str) -> tuple[str, str]:
    """``"pair:product@resnet18/frozen"`` -> (``"pair@resnet18/frozen"``, ``"product"``)."""
    fusion, rest = name.split(":", 1)
    rule_part, _, mode = rest.rpartition("/")
    rule, _, backbone = rule_part.partition("@")
    return f"{fusion}{'@' + backbone if backbone else ''}/{mode}", rule


def _fusion_plot(
    table: TableResult, singles: Sequence[ColumnData], fusions: Sequence[ColumnData], path: Path, title: str
) -> Path:
    frames = {}
    for row_name in (ACCURACY, MEAN_CLASS_ACCURACY):
        for source, kind in ((table.means, "mean"), (table.stds, "std")):
            cells: dict[str, dict[str, float]] = defaultdict(dict)
            modes = {}
            for column in fusions:
                row, rule = _fusion_row(column.name)
                cells[row][rule] = float(source.loc[row_name, column.name])
                modes[row] = column.finetune
            frame = pd.DataFrame.from_dict(cells, orient="index")
            best = {}
            for row, mode in modes.items():
                same = [c for c in singles if c.finetune == mode] or list(singles)
                if same:
                    top = max(same, key=lambda c: _accuracy(table, c))
                    best[row] = float(source.loc[row_name, top.name])
            frame[BEST_SINGLE] = pd.Series(best)
            frames[(row_name, kind)] = frame
    return plot_fusion_heatmap(
        frames[(ACCURACY, "mean")],
        frames[(MEAN_CLASS_ACCURACY, "mean")],
        path,
        f"Fusions by rule: test accuracy (%), last column the best single model of the same fine-tune mode\n{title}",
        frames[(ACCURACY, "std")],
        frames[(MEAN_CLASS_ACCURACY, "std")],
    )


def budget_plots(tables: Sequence[TableResult], naming: Naming, folder: Path, sweep_name: str) -> list[Path]:
    """Accuracy against the label budget, one line per single model (fusions have their own figures),
    per dataset (and class weight)."""
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    titles, references = {}, defaultdict(set)
    for table in tables:
        key = naming.series_suffix(table.dataset, table.size, table.class_weight)
        titles[key] = f"{sweep_name}: {table.dataset} ({table.size} px), class weight {table.class_weight}"
        for column in table.columns:
            if column.kind == "fusion":
                continue
            if column.kind == "reference":
                references[key].add(column.name)
            n_labels = stats.mean_std([o.n_labels for o in column.outcomes.values()])[0]
            if math.isnan(n_labels):
                continue
            mean, std = stats.mean_std([100 * v for v in column.values("acc")])
            series[key][column.name].append((n_labels, table.label_fraction, mean, std))
    paths = []
    for key, lines in series.items():
        if max(len(points) for points in lines.values()) < 2:
            continue  # one label budget: nothing to draw a line through
        reference = next(iter(references[key])) if len(references[key]) == 1 else None
        paths.append(
            plot_accuracy_vs_labels(
                lines,
                folder / f"accuracy_vs_labels_{key}.png",
                f"Test accuracy against the label budget, single models (error bars: sd over seeds)\n{titles[key]}",
                reference=reference,
            )
        )
    return paths
