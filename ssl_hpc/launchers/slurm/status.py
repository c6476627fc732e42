"""``--status`` for a sweep submitted to Slurm: one row per job from MLflow and Slurm together.

MLflow knows which runs finished or failed and why (the exception's tags); Slurm knows what is still
queued or running, and why a job ended without a run (OOM, TIMEOUT, a failed dependency...). The rows
combine both, with one ``squeue`` and one ``sacct`` call for the whole sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Run

from ssl_hpc.jobs import Job
from ssl_hpc.launchers.slurm.queries import (
    ALIVE,
    RUNNING_STATES,
    AccountingEntry,
    SlurmError,
    sacct,
    squeue,
)
from ssl_hpc.launchers.slurm.records import load_records
from ssl_hpc.runner import RunLock
from ssl_hpc.status import JobStatus, classify
from ssl_hpc.tracking import FAILED, FINISHED, SweepTracker
from ssl_hpc.train.loop import LAST

log = logging.getLogger(__name__)

# sacct's terminal states, as --status reports them.
REASONS = {
    "OUT_OF_MEMORY": "OOM",
    "TIMEOUT": "TIMEOUT",
    "PREEMPTED": "PREEMPTED",
    "NODE_FAIL": "NODE_FAIL",
    "BOOT_FAIL": "BOOT_FAIL",
    "DEADLINE": "DEADLINE",
    "FAILED": "FAILED",
    "CANCELLED": "CANCELLED",
    "REVOKED": "REVOKED",
}


def failure_reason(
    entry: AccountingEntry | None, run_tags: Mapping[str, str] | None = None, dependency_failed: bool = False
) -> str:
    """Why a job ended without a FINISHED run: Slurm's state (OOM, TIMEOUT, PREEMPTED, NODE_FAIL...) and the
    last line of the exception MLflow recorded. A cancelled job whose pretraining job failed says so, from
    sacct's reason or, when sacct has not recorded one (seen under load), from the pretraining job itself."""
    parts = []
    if entry is not None:
        state = REASONS.get(entry.state, entry.state)
        if state == "CANCELLED" and ("Dependency" in entry.reason or dependency_failed):
            state = "CANCELLED (its pretraining job failed)"
        elif state == "FAILED" and entry.exit_code and entry.exit_code != "0:0":
            state = f"FAILED (exit {entry.exit_code})"
        elif state == "COMPLETED":
            state = "COMPLETED without a FINISHED run"
        parts.append(f"slurm {entry.job_id} {state}")
    tags = run_tags or {}
    if tags.get("error"):
        lines = [line for line in tags["error"].strip().splitlines() if line.strip()]
        tail = lines[-1].strip() if lines else tags.get("error_type", "")
        parts.append(tail[:160])
    elif tags.get("error_type"):
        parts.append(tags["error_type"])
    return "; ".join(parts)


def slurm_statuses(
    jobs: list[Job], tracker: SweepTracker | None, output_root: Path, runs: Mapping[str, Run] | None = None
) -> list[JobStatus] | None:
    """One row per job from MLflow and Slurm (one ``squeue`` and one ``sacct`` call); ``None`` if the sweep
    was never submitted to Slurm. ``runs``: the sweep's runs by key when the caller already searched them."""
    records = load_records(output_root)
    if not records:
        return None
    if runs is None:
        runs = tracker.runs_by_key() if tracker is not None else {}
    submitted = {key: records[key] for key in (job.key for job in jobs) if key in records}
    squeue_answered = True
    try:
        queue = squeue([record.job_id for record in submitted.values()])
    except SlurmError as error:
        log.warning("squeue: %s", error)
        queue, squeue_answered = {}, False
    unfinished = [
        record.job_id
        for key, record in submitted.items()
        if record.job_id not in queue and not (runs.get(key) and runs[key].info.status == FINISHED)
    ]
    try:
        accounting = sacct(unfinished)
    except SlurmError as error:
        log.warning("sacct: %s", error)
        accounting = {}

    def dependency_failed(job: Job) -> bool:
        for key in job.depends_on:
            record, run = submitted.get(key), runs.get(key)
            entry = accounting.get(record.job_id) if record is not None else None
            if entry is not None and entry.state not in ALIVE and entry.state != "COMPLETED":
                return True
            if run is not None and run.info.status == FAILED:
                return True
        return False

    rows = []
    for job in jobs:
        run = runs.get(job.key)
        record = submitted.get(job.key)
        run_id = run.info.run_id if run else None
        workdir = output_root / job.key
        has_checkpoint = (workdir / LAST).is_file()
        if run is not None and run.info.status == FINISHED:
            rows.append(JobStatus(job, "finished", f"slurm {record.job_id}" if record else "", run_id))
            continue
        if record is not None and record.job_id in queue:
            entry = queue[record.job_id]
            state = "running" if entry.state in RUNNING_STATES else "pending"
            detail = f"slurm {entry.job_id} {entry.state}"
            if entry.reason and entry.reason != "None":
                detail += f" ({entry.reason})"
            if entry.node and state == "running":
                detail += f" on {entry.node}"
            if state == "pending" and run is not None:
                detail += "; will resume from checkpoint" if has_checkpoint else "; will restart"
            rows.append(JobStatus(job, state, detail, run_id))
            continue
        entry = accounting.get(record.job_id) if record is not None else None
        if entry is not None and entry.state in ALIVE:  # sacct() keeps the state's first word
            # Without squeue's answer, sacct still knows the job is queued or running: not a failure.
            state = "running" if entry.state in RUNNING_STATES else "pending"
            note = "" if squeue_answered else "; squeue did not answer, state from sacct"
            rows.append(JobStatus(job, state, f"slurm {entry.job_id} {entry.state}{note}", run_id))
            continue
        if record is not None and (entry is not None or (run is not None and run.info.status == FAILED)):
            reason = failure_reason(entry, run.data.tags if run else None, dependency_failed(job))
            if run is not None and run.info.status != FAILED and has_checkpoint:
                reason += "; re-run the sweep to resume from its checkpoint"
            rows.append(JobStatus(job, "failed", reason, run_id))
            continue
        state, detail = classify(run, RunLock.held(workdir), has_checkpoint)
        if record is not None:
            detail = f"slurm {record.job_id}: no record yet; {detail}".rstrip("; ")
        rows.append(JobStatus(job, state, detail, run_id))
    return rows
