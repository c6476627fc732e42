"""The whole aggregation step, :func:`aggregate_sweep`: collect, fuse, tabulate, plot, write
``report.html`` (:mod:`ssl_hpc.aggregate.report`), then replace ``results/<sweep>/`` and log everything
as the artifacts of the sweep's ``aggregate`` MLflow run.

Two aggregations of one sweep run one after the other (a file lock beside the results folder). The
outputs are written to a staging folder first and swapped in only once complete
(:mod:`ssl_hpc.aggregate.results_folder`), so a failed or interrupted aggregation leaves the previous
results as they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ssl_hpc.aggregate.collect import RunRecord, collect
from ssl_hpc.aggregate.columns import Naming
from ssl_hpc.aggregate.errors import AggregationError
from ssl_hpc.aggregate.figures import budget_plots, table_plots
from ssl_hpc.aggregate.findings import collect_cams, leakage_frame
from ssl_hpc.aggregate.fusion_columns import Skip
from ssl_hpc.aggregate.mlflow_run import aggregate_run, fusion_metrics, run_tags
from ssl_hpc.aggregate.report import write_report
from ssl_hpc.aggregate.results_folder import refuse_foreign_folder, replace_folder, write_manifest
from ssl_hpc.aggregate.summary import paired_tests_frame, summary_frame
from ssl_hpc.aggregate.table import TableResult, budget_order, build_table, write_table
from ssl_hpc.config import SweepConfig
from ssl_hpc.evaluate.tables import write_frame
from ssl_hpc.files import exclusive_lock, ordinary_folder_mode
from ssl_hpc.tracking import FINISHED, SweepTracker, resolve_tracking_uri

log = logging.getLogger("ssl_hpc.aggregate")


@dataclass
class AggregateResult:
    results_dir: Path
    run_id: str
    tables: list[TableResult]
    skipped: list[Skip]
    notes: list[str]
    metrics: dict[str, float]

    def table(self, dataset: str, label_fraction: str) -> TableResult:
        found = [t for t in self.tables if t.dataset == dataset and t.label_fraction == label_fraction]
        if len(found) != 1:
            raise KeyError(f"{len(found)} tables for {dataset} / {label_fraction}: {[t.stem for t in self.tables]}")
        return found[0]


def results_dir(sweep: SweepConfig, project_root: Path) -> Path:
    """``<results_dir>/<sweep name>``; a relative ``results_dir`` is relative to the project."""
    base = Path(sweep.results_dir).expanduser()
    return ((base if base.is_absolute() else Path(project_root) / base) / sweep.name).resolve()


def current_keys(sweep: SweepConfig) -> set[str]:
    try:
        from ssl_hpc.jobs import expand_jobs

        return {job.key for job in expand_jobs(sweep)}
    except Exception as error:  # noqa: BLE001 - only used to prefer current runs over stale duplicates
        log.info("could not expand the sweep's jobs (%s); duplicates are resolved by recency only", error)
        return set()


def aggregate_sweep(sweep: SweepConfig, project_root: Path, tracking_uri: str | None = None) -> AggregateResult:
    """Collects, fuses, tabulates, plots and logs; replaces ``results/<sweep>/`` and the aggregate run's artifacts.

    Raises :class:`AggregationError` when the sweep has no FINISHED fine-tune run.
    """
    tracking_uri = tracking_uri or resolve_tracking_uri(project_root)
    tracker = SweepTracker.existing(tracking_uri, sweep.name)
    if tracker is None:
        raise AggregationError(
            f"no MLflow experiment {sweep.name!r} in {tracking_uri}: run the sweep first "
            f"(python launch/sweep.py <sweep.yaml>)"
        )
    final = results_dir(sweep, project_root)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(final.parent / f".{sweep.name}.lock"):  # two aggregations of one sweep: one after the other
        refuse_foreign_folder(final)
        with tempfile.TemporaryDirectory(prefix="aggregate-") as downloads:
            records, notes = collect(tracker, Path(downloads), current_keys(sweep))
            if not records:
                raise AggregationError(f"sweep {sweep.name!r} has no FINISHED fine-tune runs in {tracking_uri}")
            staging = Path(tempfile.mkdtemp(prefix=f".{sweep.name}.tmp-", dir=final.parent))
            os.chmod(staging, ordinary_folder_mode())  # mkdtemp's 0700 would hide the tables from the group
            try:
                result = _aggregate(sweep, tracker, records, notes, staging, project_root)
                written = write_manifest(staging)
                replace_folder(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            run_id = _log_run(tracker, sweep, records, result, final, written, project_root)
    result.results_dir, result.run_id = final, run_id
    for table in result.tables:
        table.paths = [final / path.relative_to(staging) for path in table.paths]
    return result


def _aggregate(
    sweep: SweepConfig,
    tracker: SweepTracker,
    records: list[RunRecord],
    notes: list[str],
    folder: Path,
    project_root: Path,
) -> AggregateResult:
    settings = sweep.aggregate
    naming = Naming.of(records, settings.reference)
    by_table: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_table[record.table_key].append(record)
    order = sorted(by_table, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0, budget_order(k[2]), k[3]))
    skipped: list[Skip] = []
    tables, weights_cache = [], {}
    for key in order:
        stem = "table_" + naming.table_suffix(*key)
        table = build_table(stem, by_table[key], settings, naming, sweep.grid.method, skipped, weights_cache)
        table.paths = write_table(table, folder, sweep.name, settings.confidence)
        if settings.plots:
            table.paths += table_plots(tracker, table, folder, sweep.name)
        tables.append(table)
    summary, shown = summary_frame(tables)
    write_frame(
        summary,
        folder,
        "summary",
        shown=shown,
        caption=f"{sweep.name}: summary (accuracy in %, AUC / F1 / kappa as fractions; hours per seed)",
    )
    paired_tests_frame(tables).to_csv(folder / "paired_tests.csv", index=False, float_format="%.10g")
    pd.DataFrame([vars(s) for s in skipped], columns=["table", "column", "seed", "reason"]).to_csv(
        folder / "skipped.csv", index=False
    )
    leakage = leakage_frame(records)
    if len(leakage):
        leakage.to_csv(folder / "leakage.csv", index=False)
    if settings.plots:
        budget_plots(tables, naming, folder, sweep.name)
        collect_cams(tracker, tables, folder)
    runs = [
        {"table": t.stem, "column": c.name, "seed": s, "run_id": rid}
        for t in tables
        for c in t.columns
        for s in sorted(c.outcomes)
        for rid in c.outcomes[s].run_ids
    ]
    pd.DataFrame(runs).to_csv(folder / "runs.csv", index=False)
    details = {
        t.stem: {c.name: {str(s): d for s, d in c.details.items()} for c in t.columns if c.details} for t in tables
    }
    (folder / "fusions.json").write_text(json.dumps(details, indent=2, default=float))
    (folder / "notes.md").write_text(_notes(sweep, records, notes, skipped))
    write_report(folder, sweep.name, [t.stem for t in tables])  # last: it shows every file written above
    return AggregateResult(folder, "", tables, skipped, notes, fusion_metrics(tables))


def _notes(sweep: SweepConfig, records: Sequence[RunRecord], notes: list[str], skipped: list[Skip]) -> str:
    lines = [f"# Aggregation of {sweep.name}", "", f"{len(records)} FINISHED fine-tune runs.", ""]
    if notes:
        lines += ["## Which runs the tables use", "", *[f"- {note}" for note in notes], ""]
    if skipped:
        lines += ["## Fusions skipped", "", *[f"- {s.table} {s.column} seed {s.seed}: {s.reason}" for s in skipped], ""]
    return "\n".join(lines)


def _log_run(
    tracker: SweepTracker,
    sweep: SweepConfig,
    records: Sequence[RunRecord],
    result: AggregateResult,
    folder: Path,
    written: Sequence[str],
    project_root: Path,
) -> str:
    """Logs the aggregation's own files (not what a user keeps beside them) into the sweep's aggregate run."""
    run_id = aggregate_run(tracker, run_tags(sweep, records, project_root, len(result.skipped)))
    try:
        tracker.log_metrics(
            run_id, {**result.metrics, "n_runs": float(len(records)), "skipped_fusions": float(len(result.skipped))}
        )
        for name in written:
            parent = str(Path(name).parent)
            tracker.log_artifact(run_id, folder / name, None if parent == "." else parent)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id, FINISHED)
    return run_id
