"""``launch/sweep.py SWEEP.yaml --status --watch [SECONDS]``: a compact view of a sweep, redrawn until it ends.

A sweep of hundreds of jobs does not fit ``--status``'s one row per job on a screen; what a person
watching it wants is how many jobs are where, how far the running ones are and when they will end, and
why the failed ones failed. Each refresh asks MLflow once (one search for the whole experiment) and, for
a sweep submitted to Slurm, Slurm once (one ``squeue``, one ``sacct``): watching a large sweep every few
seconds must not load the tracking server or the scheduler more than one ``--status`` does.

The table is built by pure functions (:func:`compact_table` and its helpers) from the status rows and
the runs; :func:`collect` does the asking and :func:`watch` the redrawing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TextIO

from mlflow.entities import Run

from ssl_hpc.jobs import Job
from ssl_hpc.launchers.slurm import load_records, slurm_statuses
from ssl_hpc.runner import run_name
from ssl_hpc.status import STATES, JobStatus, local_statuses
from ssl_hpc.tracking import SweepTracker, ui_address

CLEAR = "\033[H\033[2J"  # cursor home, erase the screen
SEPARATOR = "-" * 72
MAX_LISTED = 20  # running or failed jobs listed by name; the rest are counted
INTERRUPTED = 130  # Ctrl-C: what a shell reports for SIGINT, so a script tells "stopped watching" from "ended"


def job_epochs(job: Job) -> int | None:
    """How many epochs the job trains (its stage's ``epochs``, as its run's params record it); ``None``
    for a k-NN probe, which trains none."""
    config = job.config
    settings = config.pretrain_settings if config.stage == "pretrain" else config.finetune_settings
    if settings is None or config.finetune == "knn":
        return None
    return int(settings.epochs)


def epochs_done(run: Run | None) -> tuple[int, float] | None:
    """(epochs logged, seconds of the last one) from the run's latest ``epoch_seconds`` (step = epoch,
    0-based). A search returns each metric's latest value with its step; ``RunData.metrics`` keeps only
    the value, so the step is read from the metric objects the search built."""
    if run is None:
        return None
    latest = [metric for metric in getattr(run.data, "_metric_objs", []) if metric.key == "epoch_seconds"]
    if not latest:
        return None
    metric = max(latest, key=lambda entry: entry.step)
    return metric.step + 1, float(metric.value)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(job: Job, run: Run | None) -> str:
    """``epoch 2/10  ETA 1:20`` (the ETA of the training epochs left, at the last epoch's pace; the test
    evaluation and the CAMs come after), ``epoch 0/10`` before the first epoch ends, ``""`` for a k-NN."""
    total = job_epochs(job)
    if total is None:
        return ""
    done = epochs_done(run)
    if done is None:
        return f"epoch 0/{total}"
    epochs, seconds = done
    left = max(0, total - epochs)
    return f"epoch {epochs}/{total}  ETA {format_duration(left * seconds)}"


def count_table(rows: list[JobStatus]) -> list[str]:
    """One line per stage present, one column per state."""
    stages = [stage for stage in ("pretrain", "finetune") if any(row.job.stage == stage for row in rows)]
    lines = [f"{'stage':10}" + "".join(f"{state:>10}" for state in STATES)]
    for stage in stages:
        counts = [sum(row.job.stage == stage and row.state == state for row in rows) for state in STATES]
        lines.append(f"{stage:10}" + "".join(f"{count:>10}" for count in counts))
    return lines


def job_label(job: Job) -> str:
    """The run's name without its key (the key has its own column)."""
    return run_name(job).removesuffix(f" {job.key}")


def listed(title: str, entries: list[str]) -> list[str]:
    if not entries:
        return []
    more = len(entries) - MAX_LISTED
    return [f"{title} ({len(entries)}):", *entries[:MAX_LISTED], *([f"  ... and {more} more"] if more > 0 else [])]


def compact_table(rows: list[JobStatus], runs: Mapping[str, Run], header: str, footer: str = "") -> str:
    """The watched view: counts per stage and state, the running jobs with their epoch and ETA, the
    failed ones with their reason."""
    running = []
    for row in rows:
        if row.state == "running":
            text = "  ".join(part for part in (progress_text(row.job, runs.get(row.job.key)), row.detail) if part)
            running.append(f"  {row.job.key:12}  {job_label(row.job):44}  {text}".rstrip())
    failed = [
        f"  {row.job.key:12}  {job_label(row.job):44}  {row.detail or 'no reason recorded'}"
        for row in rows
        if row.state == "failed"
    ]
    lines = [header, *count_table(rows), *listed("running", running), *listed("failed", failed)]
    if all_ended(rows):
        lines.append("every job has ended")
    return "\n".join([*lines, *([footer] if footer else [])])


def all_ended(rows: list[JobStatus]) -> bool:
    """Nothing left to wait for: no job pending or running (finished and failed ones have ended)."""
    return not any(row.state in ("pending", "running") for row in rows)


def frame(text: str, tty: bool) -> str:
    """One redraw: on a terminal the screen is cleared first; in a log or a pipe, a separator line."""
    return f"{CLEAR}{text}\n" if tty else f"{SEPARATOR}\n{text}\n"


class Collector:
    """Asks MLflow (one search) and, for a sweep submitted to Slurm, Slurm (one ``squeue``, one ``sacct``)
    for every job's state, once per call. The experiment may not exist yet when watching starts."""

    def __init__(self, jobs: list[Job], tracking_uri: str, sweep_name: str, output_root: Path):
        self.jobs, self.tracking_uri, self.sweep_name, self.output_root = jobs, tracking_uri, sweep_name, output_root
        self.tracker: SweepTracker | None = None

    def __call__(self) -> tuple[list[JobStatus], dict[str, Run]]:
        if self.tracker is None:
            self.tracker = SweepTracker.existing(self.tracking_uri, self.sweep_name)
        runs = self.tracker.runs_by_key() if self.tracker is not None else {}
        if load_records(self.output_root):
            rows = slurm_statuses(self.jobs, self.tracker, self.output_root, runs=runs)
            if rows is not None:
                return rows, runs
        return local_statuses(self.jobs, self.tracker, self.output_root, runs=runs), runs


def ui_line(tracking_uri: str, sweep_name: str, tracker: SweepTracker | None = None) -> str:
    """Where to see the sweep's runs in the MLflow UI (``<ui>/#/experiments/<id>/runs``), and how to start
    that UI when the store is a file."""
    tracker = tracker or SweepTracker.existing(tracking_uri, sweep_name)
    if tracker is None:
        return f"MLflow UI: no experiment {sweep_name!r} yet in {tracking_uri} (the sweep creates it when it starts)"
    address, hint = ui_address(tracking_uri, tracker.experiment_id)
    return f"MLflow UI: {address}" + (f"  ({hint})" if hint else "")


def watch(
    collect: Callable[[], tuple[list[JobStatus], Mapping[str, Run]]],
    interval: float,
    title: str,
    out: TextIO,
    tty: bool,
    footer: Callable[[], str] = lambda: "",
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Redraws the compact table every ``interval`` seconds. Returns 0 once no job is pending or running,
    :data:`INTERRUPTED` (130) on Ctrl-C, which stops the watching only, never the sweep."""
    try:
        while True:
            rows, runs = collect()
            now = datetime.now().strftime("%H:%M:%S")
            header = f"{title}  {now}  every {interval:g}s  (Ctrl-C stops watching, not the sweep)"
            out.write(frame(compact_table(rows, runs, header, footer()), tty))
            out.flush()
            if all_ended(rows):
                return 0
            sleep(interval)
    except KeyboardInterrupt:
        out.write("\nstopped watching; the sweep goes on\n")
        out.flush()
        return INTERRUPTED
