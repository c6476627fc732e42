"""Shared by the benchmark scripts: run a sweep through the suite's own pipeline in a temporary store."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from ssl_hpc.config import (  # noqa: E402
    apply_overrides,
    default_data_root,  # noqa: E402
    validate_sweep,
)
from ssl_hpc.jobs import Job, expand_jobs  # noqa: E402
from ssl_hpc.launchers.local import run_local  # noqa: E402
from ssl_hpc.tracking import SweepTracker  # noqa: E402
from ssl_hpc.train.handle import RunContext  # noqa: E402

# The probe that compares frozen features: a linear head, Adam, cosine, the epoch with the best val AUC.
LINEAR_PROBE = {
    "batch_size": 128,
    "head": "linear",
    "optimizer": "adam",
    "lr": 1e-3,
    "schedule": "cosine",
    "min_lr": 0.0,
    "select_by": "val_auc",
}


def run_sweep_in_temporary_store(
    raw: dict, overrides: list[str]
) -> tuple[list[Job], dict[str, dict[str, float]], float]:
    """Runs every job of the sweep locally; returns the jobs, key -> final metrics, minutes taken."""
    sweep = validate_sweep(apply_overrides(raw, overrides), source="bench recipe")
    jobs = expand_jobs(sweep)
    with tempfile.TemporaryDirectory(prefix=f"bench-{sweep.name}-") as folder:
        context = RunContext(
            sweep_name=sweep.name,
            tracking_uri=f"sqlite:///{folder}/mlflow.db",
            output_root=Path(folder) / "outputs",
            data_root=default_data_root(sweep.data_root),
            runtime=sweep.runtime,
            progress=sys.stderr.isatty(),
            datasets=sweep.datasets,
            cam=sweep.cam,  # a recipe's cam: section (the benchmarks that measure no CAM turn it off)
        )
        started = time.perf_counter()
        outcomes = run_local(jobs, context)
        minutes = (time.perf_counter() - started) / 60
        if set(outcomes.values()) != {"finished"}:
            raise SystemExit(f"not every run finished: {outcomes}")
        runs = SweepTracker(context.tracking_uri, sweep.name).runs_by_key()
        metrics = {key: dict(run.data.metrics) for key, run in runs.items()}
    return jobs, metrics, minutes
