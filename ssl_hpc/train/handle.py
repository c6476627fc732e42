"""What a stage (pretraining, fine-tuning) gets from the runner: the sweep's shared context and an
open MLflow run with the folder where the job keeps its checkpoints.

The runner (:mod:`ssl_hpc.runner`) opens the run and hands a :class:`RunHandle` to the stage; the
stage trains, evaluates and logs through it, and never needs to know which backend it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

import ssl_hpc
from ssl_hpc.config import CamSettings, ImageFolderSpec, RuntimeSettings
from ssl_hpc.files import save_atomic
from ssl_hpc.tracking import GitState, SweepTracker
from ssl_hpc.train.loop import CheckpointPolicy, Precision
from ssl_hpc.train.phases import PhaseTimer

if TYPE_CHECKING:
    from ssl_hpc.data.loading import DatasetCache
    from ssl_hpc.jobs import Job


@dataclass(frozen=True)
class RunContext:
    """What every job of a sweep shares, resolved once where the sweep is launched."""

    sweep_name: str
    tracking_uri: str
    output_root: Path
    data_root: Path
    runtime: RuntimeSettings = RuntimeSettings()
    git: GitState | None = None
    progress: bool = False
    extra_tags: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, ImageFolderSpec] = field(default_factory=dict)  # the sweep's declared image folders
    cam: CamSettings = CamSettings()  # CAM figures and scores after each fine-tune run
    # Called after each epoch's metrics are logged (launch/tune.py reports them to Ray Tune). Not pickled
    # across machines: set it where the job runs.
    on_epoch: Callable[[Job, int, Mapping[str, float]], None] | None = field(default=None, compare=False, repr=False)


@dataclass
class RunHandle:
    """An open MLflow run and the folder where the job keeps its checkpoints. Metrics and artifacts go
    through :meth:`log_metrics` and :meth:`log_artifacts`, whose time ``timer`` charges to ``upload``."""

    job: Job
    tracker: SweepTracker
    run_id: str
    workdir: Path
    precision: Precision
    context: RunContext
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    def log_history(self, history: list[dict[str, float]]) -> None:
        """On resume: logs every epoch of ``history`` that MLflow does not have yet (after a crash, some)."""
        if history:
            self.tracker.set_tags(self.run_id, {"resumed_after_epoch": str(int(history[-1]["epoch"]))})
        logged = set(self.tracker.logged_steps(self.run_id, "train_loss"))
        for entry in history:
            epoch = int(entry["epoch"])
            if epoch not in logged:
                self.log_epoch(epoch, entry)

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        values = {name: value for name, value in metrics.items() if name != "epoch"}
        self.log_metrics(values, step=epoch)
        if self.context.on_epoch is not None:
            self.context.on_epoch(self.job, epoch, values)

    @property
    def checkpoint_policy(self) -> CheckpointPolicy:
        """Resume only from checkpoints this code wrote; a discarded one is tagged on the run."""
        git = self.context.git
        version = (git.commit + ("+dirty" if git.dirty else "")) if git is not None else ssl_hpc.__version__

        def discarded(reason: str) -> None:
            self.tracker.set_tags(self.run_id, {"checkpoint_discarded": reason[:4000], "restarted_from_epoch": "0"})

        runtime = self.context.runtime
        return CheckpointPolicy(version, runtime.resume_other_version, discarded, runtime.checkpoint_every_s)

    def log_dataset(self, cache: DatasetCache, name: str, size: int, context: str = "training") -> None:
        """The run's data as an MLflow dataset input (``<name>@<size>``, the digest of its splits): the runs
        table's Dataset column then says what each run trained on, and a changed file shows as a new digest."""
        download = self.job.config.data.download
        dataset = cache.get(name, size, download)
        profile = {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)}
        profile["classes"] = dataset.num_classes
        digest = cache.fingerprint(name, size, download)
        self.tracker.log_dataset(self.run_id, f"{name}@{size}", digest, cache.source(name, size), profile, context)

    def artifact_dir(self) -> Path:
        path = self.workdir / "artifacts"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """One batch of metrics (one call to the store however many there are); ``step``: an epoch's."""
        with self.timer.phase("upload"):
            if step is None:
                self.tracker.log_metrics(self.run_id, metrics)
            else:
                self.tracker.log_metrics(self.run_id, metrics, step=step)

    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        with self.timer.phase("upload"):
            for path in paths:
                self.tracker.log_artifact(self.run_id, path, artifact_path)


def save_model(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    return save_atomic({name: tensor.detach().cpu() for name, tensor in state.items()}, path)
