"""Runs one job end to end: its MLflow run, its data, its training, its evaluation, its artifacts.

Every backend (local, Slurm, Ray) calls :func:`run_job` with the same job and context, so a run
behaves the same wherever it executes. The MLflow run is found again by the job's key: a FINISHED
one is skipped, an unfinished one is resumed from its last checkpoint into the same run, and an
epoch's metrics are logged only after its checkpoint is on disk (and re-logged on resume if the
process died in between), so every epoch is in the history exactly once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Run

from ssl_hpc.config import RunConfig
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.files import atomic_write_text, is_locked, try_lock
from ssl_hpc.jobs import Job
from ssl_hpc.tracking import FAILED, FINISHED, KILLED, RUNNING, SweepTracker, flatten
from ssl_hpc.train.handle import RunContext, RunHandle
from ssl_hpc.train.loop import LAST, Precision
from ssl_hpc.train.phases import job_timer

log = logging.getLogger(__name__)

LOCK = "lock"


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible")
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class RunLock:
    """An exclusive lock on a run's folder, released by the kernel if the process dies. Who holds it
    is written beside it (``lock.owner``), for a person looking at a run that seems stuck."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK
        self._lock = None

    def acquire(self) -> bool:
        self._lock = try_lock(self.path)
        if self._lock is None:
            return False
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        atomic_write_text(self.path.with_name(f"{LOCK}.owner"), json.dumps(owner))
        return True

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @staticmethod
    def held(workdir: Path) -> bool:
        """Whether a live process holds the lock on ``workdir``."""
        return is_locked(workdir / LOCK)


OUTPUT_DIR_TAG = "output_dir"


def running_elsewhere(run: Run | None, output_root: Path) -> str | None:
    """The other output folder whose job owns ``run``, if it is RUNNING there: two checkouts (or two
    ``output_dir``s) submitting one sweep to one tracking store share its runs but not their run locks, and
    a job must neither resume nor mark KILLED a run another folder's job may be writing right now."""
    if run is None or run.info.status != RUNNING:
        return None
    owner = run.data.tags.get(OUTPUT_DIR_TAG)
    return owner if owner and owner != str(Path(output_root).resolve()) else None


# Short forms for the run name: MLflow's runs table cuts names at about 22 characters.
SHORT_MODELS = {"supervised": "sup", "random_init": "rand", "barlowtwins": "barlow"}
SHORT_MODES = {"frozen": "frz", "end_to_end": "e2e", "partial": "part", "knn": "knn"}
SHORT_WEIGHTS = {"none": "", "inverse_count_complement": "icc", "inverse_frequency": "invf", "effective_number": "effn"}


def label_budget_short(fraction: float | None, per_class: int | None) -> str:
    """``0.25`` -> ``25%``, ``1.0`` -> ``100%``, 10 labels per class -> ``10/cls``."""
    if per_class is not None:
        return f"{per_class}/cls"
    return f"{(fraction if fraction is not None else 1.0) * 100:g}%"


def run_name(job: Job) -> str:
    """The run's name in MLflow, leading with what differs between runs of a sweep, in short forms (model,
    label budget, class weight unless none, fine-tune mode, seed), so the UI's cut (~22 characters) still
    tells them apart, e.g. ``simclr 25% icc e2e s0 pneumoniamnist@28 resnet18 3f2a9c01d4e5``. What a sweep
    rarely varies (data, backbone) and the key, which makes the name unique, follow."""
    config = job.config
    model = SHORT_MODELS.get(job.model_name or config.method, job.model_name or config.method)
    rest = [f"s{config.seed}", f"{config.dataset}@{config.size}", config.backbone, job.key]
    if config.stage == "pretrain":
        return " ".join([model, "pretrain", *rest])
    weight = str(config.class_weight)
    weight = SHORT_WEIGHTS.get(weight, weight.replace("critical:", "crit:"))
    budget = label_budget_short(config.label_fraction, config.labels_per_class)
    mode = SHORT_MODES.get(str(config.finetune), str(config.finetune))
    return " ".join(part for part in [model, budget, weight, mode, *rest] if part)


def _open_run(tracker: SweepTracker, job: Job, context: RunContext, workdir: Path, existing: Run | None) -> str | None:
    """The MLflow run for the job (``existing``, the key's unfinished run, to resume), or a new one;
    ``None`` when a job of another output folder created the key's run at the same moment."""
    tags = {**job.tags(context.sweep_name), **context.extra_tags, OUTPUT_DIR_TAG: str(context.output_root.resolve())}
    if context.git is not None:
        tags["mlflow.source.git.commit"] = context.git.commit
        tags["git_dirty"] = str(context.git.dirty).lower()
    # Resume into the same run from its checkpoint, or restart in it when it failed before logging any epoch
    # (a missing dataset, a pretraining job not finished yet): either way no second run for the key.
    if existing is not None and (
        (workdir / LAST).is_file() or not tracker.logged_steps(existing.info.run_id, "train_loss")
    ):
        run_id = existing.info.run_id
        tracker.reopen(run_id)
        attempts = int(existing.data.tags.get("attempts", "1")) + 1
        tracker.set_tags(run_id, {**tags, "attempts": str(attempts)})
        if "error_type" in existing.data.tags:  # the interruption being resumed from is history now
            tracker.set_tags(run_id, {"previous_error_type": existing.data.tags["error_type"]})
            tracker.delete_tags(run_id, ("error", "error_type"), existing.data.tags)
        log.info("%s: resuming MLflow run %s (attempt %d)", job.key, run_id, attempts)
        return run_id
    if existing is not None:
        # Its checkpoint is gone: training restarts from epoch 0, so the old history cannot continue.
        tracker.set_tags(existing.info.run_id, {"superseded": "true", "superseded_reason": "checkpoint missing"})
        tracker.finish(existing.info.run_id, KILLED)
    params = flatten(job.config.model_dump(mode="json"))
    run_id = tracker.create_run(run_name(job), {**tags, "attempts": "1"}, params)
    rival = tracker.claim(run_id, job.key)
    if rival is not None:
        log.warning(
            "%s: another output folder's job started MLflow run %s at the same time; leaving it", job.key, rival
        )
        return None
    if context.git is not None and context.git.dirty:
        with tempfile.TemporaryDirectory() as folder:
            diff = Path(folder) / "git_diff.patch"
            diff.write_text(context.git.diff)
            tracker.log_artifact(run_id, diff)
    with tempfile.TemporaryDirectory() as folder:
        resolved = Path(folder) / "config.json"
        resolved.write_text(json.dumps({"key": job.key, **job.config.model_dump(mode="json")}, indent=2))
        tracker.log_artifact(run_id, resolved)
    return run_id


StageRunner = Callable[[RunHandle, DatasetCache], None]


def _stage_runner(config: RunConfig) -> StageRunner:
    if config.stage == "finetune":
        from ssl_hpc.train.finetune_run import run_finetune

        return run_finetune
    from ssl_hpc.train.pretrain_run import run_pretrain

    return run_pretrain


def run_job(job: Job, context: RunContext, cache: DatasetCache | None = None) -> str:
    """Runs (or skips, or resumes) one job; returns ``finished``, ``skipped`` or ``busy``.

    Raises whatever the job raised, after marking its MLflow run FAILED (or KILLED when
    interrupted) with the tail of the traceback as a tag.
    """
    timer = job_timer()  # seconds_setup ... seconds_upload: where the job's wall time went
    tracker = SweepTracker(context.tracking_uri, context.sweep_name)
    existing = tracker.run_for_key(job.key)
    if existing is not None and existing.info.status == FINISHED:
        return "skipped"
    workdir = context.output_root / job.key
    lock = RunLock(workdir)
    if not lock.acquire():
        log.warning("%s: another process is running this job (lock %s); skipping", job.key, lock.path)
        return "busy"
    try:
        existing = tracker.run_for_key(job.key)  # again, under the lock: another process may have just finished it
        if existing is not None and existing.info.status == FINISHED:
            return "skipped"
        elsewhere = running_elsewhere(existing, context.output_root)
        if elsewhere:
            log.warning(
                "%s: MLflow run %s is RUNNING from another output folder (%s); not touching it",
                job.key,
                existing.info.run_id,
                elsewhere,
            )
            return "busy"
        run_id = _open_run(tracker, job, context, workdir, existing)
        if run_id is None:
            return "busy"
        try:  # everything after the run is open: a failure here too must end it FAILED, not leave it RUNNING
            if context.runtime.num_threads:
                torch.set_num_threads(context.runtime.num_threads)
            device = resolve_device(context.runtime.device)
            precision = Precision(device, context.runtime.bf16, context.runtime.channels_last, context.runtime.compile)
            handle = RunHandle(job, tracker, run_id, workdir, precision, context, timer)
            tracker.set_tags(
                run_id, {"device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device)}
            )
            seed_everything(job.config.seed)
            _stage_runner(job.config)(handle, cache or DatasetCache(context.data_root, context.datasets))
            tracker.log_metrics(run_id, timer.metrics())
        except BaseException as error:
            interrupted = isinstance(error, (KeyboardInterrupt, SystemExit))
            tail = "".join(traceback.format_exception(error))[-4000:]
            tracker.set_tags(run_id, {"error": tail, "error_type": type(error).__name__})
            tracker.finish(run_id, KILLED if interrupted else FAILED)
            raise
        tracker.finish(run_id, FINISHED)
        if not context.runtime.keep_checkpoints:
            _remove_checkpoints(workdir)
        return "finished"
    finally:
        lock.release()


def _remove_checkpoints(workdir: Path) -> None:
    """Once the run is FINISHED its model is in MLflow; the resume state is no longer needed."""
    for path in [workdir / LAST, *workdir.glob("best-*.pt")]:
        path.unlink(missing_ok=True)
    shutil.rmtree(workdir / "artifacts", ignore_errors=True)


def run_job_when_free(
    job: Job, context: RunContext, poll_s: float, timeout_s: float | None = None, cache: DatasetCache | None = None
) -> str:
    """``run_job``, waiting while another process holds the job's lock (a requeued attempt not yet gone, or
    a pretraining job another trial is running); ``busy`` only once ``timeout_s`` has passed."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        outcome = run_job(job, context, cache)
        if outcome != "busy" or (deadline is not None and time.monotonic() > deadline):
            return outcome
        time.sleep(poll_s)
