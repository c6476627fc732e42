"""One table: the columns of one dataset x size x label budget x class weight, their statistics, and
its files.

``table_<dataset>_<label_fraction>.csv`` and ``.md`` / ``.tex`` (``_<size>px`` after the dataset when
the sweep has several sizes of it, ``_<class weight>`` at the end when it has several class-weight
rules): one row per class, then accuracy and mean class accuracy, one column per model or fusion
(mean over seeds; the standard deviations beside them). The Markdown file also gets the bootstrap
intervals and the paired tests of every column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ssl_hpc.aggregate.collect import RunRecord
from ssl_hpc.aggregate.column_stats import column_statistics, reference_for
from ssl_hpc.aggregate.columns import ColumnData, Naming, single_columns
from ssl_hpc.aggregate.fusion_columns import Skip, fusion_columns
from ssl_hpc.config import AggregateSettings
from ssl_hpc.evaluate import stats
from ssl_hpc.evaluate.tables import ACCURACY, MEAN_CLASS_ACCURACY, class_table, markdown, write_class_table


@dataclass
class TableResult:
    stem: str
    dataset: str
    size: str
    label_fraction: str
    class_weight: str
    class_names: list[str]
    columns: list[ColumnData]
    means: pd.DataFrame
    stds: pd.DataFrame
    statistics: dict[str, dict]
    paths: list[Path] = field(default_factory=list)

    def run_ids(self) -> dict[str, list[str]]:
        """Column -> the MLflow runs behind it (for a fusion: all its members over all seeds)."""
        return {c.name: [rid for s in sorted(c.outcomes) for rid in c.outcomes[s].run_ids] for c in self.columns}

    def num_classes(self) -> int:
        """The table's class rows (the means end with the accuracy and mean class accuracy rows)."""
        return self.means.shape[0] - 2


def build_table(
    stem: str,
    records: Sequence[RunRecord],
    settings: AggregateSettings,
    naming: Naming,
    model_order: Sequence[str],
    skipped: list[Skip],
    weights_cache: dict,
) -> TableResult:
    first = records[0]
    num_classes = max(r.num_classes for r in records)
    class_names = next((r.class_names for r in records if len(r.class_names) == num_classes), [])
    singles = single_columns(records, naming, settings.reference, model_order)
    fusions = fusion_columns(records, settings, naming, stem, skipped)
    columns = singles + fusions
    means, stds = class_table([c.column(num_classes) for c in columns])
    references = [c for c in singles if c.kind == "reference"]
    statistics = {
        c.name: column_statistics(c, reference_for(c, references), settings, num_classes, weights_cache)
        for c in columns
    }
    adjust_for_many_comparisons(statistics, settings.confidence)
    return TableResult(
        stem,
        first.dataset,
        first.size,
        first.label_fraction,
        first.class_weight,
        class_names,
        columns,
        means,
        stds,
        statistics,
    )


def adjust_for_many_comparisons(statistics: dict[str, dict], confidence: float) -> None:
    """Holm's correction over the comparisons with the reference in one table (``p_holm``); a difference
    is ``significant`` when its corrected p-value is below 1 - confidence."""
    compared = [name for name, info in statistics.items() if "p_value" in info]
    for name, adjusted in zip(compared, stats.holm([statistics[n]["p_value"] for n in compared])):
        statistics[name]["p_holm"] = float(adjusted)
        statistics[name]["significant"] = bool(adjusted < 1.0 - confidence)


def budget_order(fraction: str) -> tuple:
    """Sort key of a ``label_fraction`` tag: fractions from the largest down, then tags starting with a count,
    largest count first."""
    try:
        return (0, -float(fraction))
    except ValueError:
        count = re.match(r"(\d+)", fraction)
        return (1, -int(count.group(1)) if count else 0, fraction)


def write_table(table: TableResult, folder: Path, sweep_name: str, confidence: float = 0.95) -> list[Path]:
    caption = (
        f"{sweep_name}: {table.dataset} ({table.size} px), labels {table.label_fraction}, class weight "
        f"{table.class_weight}; test accuracy (%)"
    )
    n_seeds = max(len(c.outcomes) for c in table.columns)
    if n_seeds > 1:
        caption += f", mean ± std over up to {n_seeds} seeds"
    paths = write_class_table(
        table.means, table.stds, folder, table.stem, caption=caption, class_names=table.class_names
    )
    rows = []
    for column in table.columns:
        info = table.statistics.get(column.name, {})
        rows.append(
            {
                "model": column.name,
                "seeds": str(len(column.outcomes)),
                f"accuracy {100 * confidence:g}% CI": _interval(info, ACCURACY),
                f"mean class acc. {100 * confidence:g}% CI": _interval(info, MEAN_CLASS_ACCURACY),
                "vs reference": info.get("paired_test", ""),
                "p": stats.format_p(info.get("p_value", math.nan)),
                "p (Holm)": stats.format_p(info.get("p_holm", math.nan)) + (" *" if info.get("significant") else ""),
            }
        )
    block = markdown(pd.DataFrame(rows), index_label=None)
    if any(column.kind == "reference" for column in table.columns):
        note = "paired tests compare each model with the reference model on the same labels and seeds."
    else:
        note = "no reference model in this table, so no paired tests."
    md_path = folder / f"{table.stem}.md"
    if n_seeds > 1:
        intervals = (
            "Intervals resample seeds, then test examples: they cover training noise and test sampling; the test "
            "against the reference is a paired t-test over seeds"
        )
    else:
        intervals = (
            "One seed: intervals resample test examples only and do NOT cover training noise (another seed "
            "trains another model); the test against the reference is McNemar's on the test examples"
        )
    significance = f"* marks a difference significant at {1 - confidence:g} after Holm's correction over this table"
    md_path.write_text(md_path.read_text() + f"\n{intervals}. {significance}; {note}\n\n" + block)
    return paths


def _interval(info: dict, score: str) -> str:
    low, high = info.get(f"{score}_ci_low"), info.get(f"{score}_ci_high")
    return "" if low is None else f"[{low:.2f}, {high:.2f}]"
