"""The sweep's one ``aggregate`` MLflow run (tags ``stage=aggregate``, ``key=aggregate``): created by
the first aggregation, reopened and its artifacts replaced by every re-run, so that the tracking UI
shows one current set of tables per sweep. Its metrics are the fusions' per-seed test metrics, named
like the runs' own metrics (``<table>/<fusion column>/seed<s>/test_acc``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ssl_hpc.aggregate.collect import RunRecord
from ssl_hpc.aggregate.table import TableResult
from ssl_hpc.config import SweepConfig
from ssl_hpc.tracking import SweepTracker, git_state, pick_run

log = logging.getLogger("ssl_hpc.aggregate")

STAGE = "aggregate"
AGGREGATE_KEY = "aggregate"


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name (alphanumerics, ``_ - . / : space``)."""
    return re.sub(r"[^\w.\- :/]", "_", "/".join(parts))


def fusion_metrics(tables: Sequence[TableResult]) -> dict[str, float]:
    """Per table, fusion and seed: ``<table>/<fusion column>/seed<s>/test_acc`` etc., as the runs name them."""
    values = {}
    for table in tables:
        for column in table.columns:
            if column.kind != "fusion":
                continue
            for seed, outcome in column.outcomes.items():
                for name, value in outcome.metrics.items():
                    if not math.isnan(value):
                        values[metric_name(table.stem.removeprefix("table_"), column.name, f"seed{seed}", name)] = value
    return values


def aggregate_run(tracker: SweepTracker, tags: dict[str, str]) -> str:
    """The sweep's one ``aggregate`` run: reopened (old artifacts cleared) if it exists, else created."""
    found = tracker.search(f"tags.stage = '{STAGE}' and tags.sweep = '{tracker.experiment}'")
    run = pick_run(found)
    if run is None:
        return tracker.create_run(f"aggregate-{tracker.experiment}", tags, {})
    run_id = run.info.run_id
    tracker.reopen(run_id)
    tracker.set_tags(run_id, tags)
    tracker.clear_artifacts(run)
    return run_id


def run_tags(sweep: SweepConfig, records: Sequence[RunRecord], project_root: Path, skipped: int) -> dict[str, str]:
    def joined(values: Iterable) -> str:
        return ",".join(sorted({str(v) for v in values}))

    tags = {
        "sweep": sweep.name,
        "key": AGGREGATE_KEY,
        "stage": STAGE,
        "method": joined(r.method for r in records),
        "model": joined(r.model for r in records),
        "backbone": joined(r.backbone for r in records),
        "dataset": joined(r.dataset for r in records),
        "label_fraction": joined(r.label_fraction for r in records),
        "class_weight": joined(r.class_weight for r in records),
        "finetune": joined(r.finetune for r in records),
        "seed": joined(r.seed for r in records),
        "n_runs": str(len(records)),
        "skipped_fusions": str(skipped),
        "aggregate_settings": json.dumps(sweep.aggregate.model_dump(mode="json"), sort_keys=True),
    }
    git = git_state(project_root)
    if git is not None:
        tags["mlflow.source.git.commit"] = git.commit
        tags["git_dirty"] = str(git.dirty).lower()
    return tags
