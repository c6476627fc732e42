"""``--status``: one row per job, from MLflow and the run folders (and the scheduler, if any)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run

from ssl_hpc.jobs import Job
from ssl_hpc.runner import RunLock
from ssl_hpc.tracking import FAILED, FINISHED, KILLED, RUNNING, SweepTracker
from ssl_hpc.train.loop import LAST

STATES = ("pending", "running", "finished", "failed")


@dataclass(frozen=True)
class JobStatus:
    job: Job
    state: str
    detail: str = ""
    run_id: str | None = None


def classify(run: Run | None, lock_held: bool, has_checkpoint: bool) -> tuple[str, str]:
    """(state, detail) from what MLflow and the run folder say."""
    if run is None:
        return ("running", "starting") if lock_held else ("pending", "")
    status = run.info.status
    if status == FINISHED:
        return "finished", ""
    if lock_held:
        return "running", ""
    if status == FAILED:
        return "failed", run.data.tags.get("error_type", "")
    resumable = "will resume from checkpoint" if has_checkpoint else "will restart"
    if status in (RUNNING, KILLED):
        return "pending", f"interrupted; {resumable}"
    return "pending", status.lower()


def local_statuses(
    jobs: list[Job], tracker: SweepTracker | None, output_root: Path, runs: Mapping[str, Run] | None = None
) -> list[JobStatus]:
    """One row per job from MLflow (one search, or ``runs`` when the caller already has them: ``--watch``
    reads their epochs too) and the run folders' locks and checkpoints."""
    if runs is None:
        runs = tracker.runs_by_key() if tracker is not None else {}
    rows = []
    for job in jobs:
        run = runs.get(job.key)
        workdir = output_root / job.key
        state, detail = classify(run, RunLock.held(workdir), (workdir / LAST).is_file())
        rows.append(JobStatus(job, state, detail, run.info.run_id if run else None))
    return rows


def format_status(rows: list[JobStatus]) -> str:
    lines = [f"{'key':12}  {'state':8}  {'job':70}  detail"]
    for row in rows:
        lines.append(f"{row.job.key:12}  {row.state:8}  {row.job.describe():70}  {row.detail}")
    counts = {state: sum(row.state == state for row in rows) for state in STATES}
    lines.append(", ".join(f"{count} {state}" for state, count in counts.items()))
    return "\n".join(lines)
