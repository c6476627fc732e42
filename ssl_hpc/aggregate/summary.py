"""The summary over all tables (``summary.csv`` / ``.md`` / ``.tex``) and the paired tests
(``paired_tests.csv``).

One summary row per column of every table: accuracy and mean class accuracy (%), AUC, macro F1 and
kappa (fractions), each as mean and standard deviation over seeds, the bootstrap intervals, the paired
test against the reference, the labels used and the cost. GPU-hours: a fine-tune run's
``train_seconds`` plus an equal share of its pretraining run's ``train_seconds`` (the pretraining time
divided by the number of collected fine-tune runs that used it, so that every pretraining run is
counted exactly once over the single-model rows); runs whose ``device`` tag is ``cpu`` count as
CPU-hours instead. A row shows the mean per seed; a fusion costs the sum of its members.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from ssl_hpc.aggregate.table import TableResult
from ssl_hpc.evaluate import stats
from ssl_hpc.evaluate.tables import ACCURACY, MEAN_CLASS_ACCURACY, format_cell

SUMMARY_METRICS = ("auc", "f1_macro", "kappa")


def summary_frame(tables: Sequence[TableResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, strings to show): one row per table column."""
    rows, shown = [], []
    for table in tables:
        for column in table.columns:
            info = table.statistics.get(column.name, {})
            row = {
                "table": table.stem,
                "dataset": table.dataset,
                "size": table.size,
                "label_fraction": table.label_fraction,
                "class_weight": table.class_weight,
                "model": column.name,
                "kind": column.kind,
                "n_seeds": len(column.outcomes),
            }
            display = {
                "dataset": table.dataset,
                "labels": table.label_fraction,
                "class weight": table.class_weight,
                "model": column.name,
            }
            per_seed_mca = column.column(table.num_classes()).mean_class_accuracy_per_seed()  # already in %
            for name, values, scale in (
                (ACCURACY, column.values("acc"), 100.0),
                (MEAN_CLASS_ACCURACY, [float(v) for v in per_seed_mca], 1.0),
                *((metric, column.values(metric), 1.0) for metric in SUMMARY_METRICS),
            ):
                mean, std = stats.mean_std([scale * v for v in values])
                row[name], row[f"{name}_std"] = mean, std
                decimals = 2 if name in (ACCURACY, MEAN_CLASS_ACCURACY) else 3
                display[name.replace("_", " ")] = format_cell(mean, std, decimals)
            for score in stats.SCORES:
                row[f"{score}_ci_low"] = info.get(f"{score}_ci_low", math.nan)
                row[f"{score}_ci_high"] = info.get(f"{score}_ci_high", math.nan)
            row["n_labels"] = stats.mean_std([o.n_labels for o in column.outcomes.values()])[0]
            row["gpu_hours"] = stats.mean_std([o.gpu_hours for o in column.outcomes.values()])[0]
            row["cpu_hours"] = stats.mean_std([o.cpu_hours for o in column.outcomes.values()])[0]
            row["paired_test"] = info.get("paired_test", "")
            row["p_value"] = info.get("p_value", math.nan)
            row["p_holm"] = info.get("p_holm", math.nan)
            row["significant"] = info.get("significant", False)
            row["interval_covers"] = info.get("interval_covers", "")
            display["labels used"] = "–" if math.isnan(row["n_labels"]) else f"{row['n_labels']:.0f}"
            display["GPU-h"] = f"{row['gpu_hours']:.3f}"
            display["CPU-h"] = f"{row['cpu_hours']:.3f}"
            display["p vs ref."] = stats.format_p(row["p_value"])
            display["p (Holm)"] = stats.format_p(row["p_holm"]) + (" *" if row["significant"] else "")
            rows.append(row)
            shown.append(display)
    return pd.DataFrame(rows), pd.DataFrame(shown)


def paired_tests_frame(tables: Sequence[TableResult]) -> pd.DataFrame:
    rows = []
    for table in tables:
        for column, info in table.statistics.items():
            for test in info.get("paired_tests", []):
                rows.append({"table": table.stem, "model": column, **test})
    return pd.DataFrame(
        rows, columns=["table", "model", "seed", "b_reference_only", "c_model_only", "statistic", "p_value", "method"]
    )
