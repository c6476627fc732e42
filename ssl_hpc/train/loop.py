"""The one training loop. Every stage and method plugs in as a :class:`TrainTask`.

The loop owns what must be the same for everyone: batching over in-memory tensors, mixed
precision, the learning-rate schedule, best-epoch selection, early stopping and the checkpoint.
A resumed run continues from the epoch after its last checkpoint with the same batch order and random
state it would have had, and its history is carried in the checkpoint so the caller can re-log anything
a crash prevented it from logging.

The checkpoint (``last.pt``, and the best epoch's weights) is written at most once per
``CheckpointPolicy.every_seconds`` and always after the final epoch: a ResNet-18's checkpoint is ~45 MB
written with fsync, 0.1-0.3 s on a local disk and more on a cluster's network filesystem, which is more
than a 28 px epoch of a frozen head or of a GPU. Epochs are reported (``on_epoch_end``) only once a
checkpoint holds them, so whoever logs them never sees an epoch that a resume would train again: a
preempted run loses at most ``every_seconds`` of training, and its metric history has no duplicates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ssl_hpc.config import StageSettings
from ssl_hpc.files import load_checkpoint, save_atomic
from ssl_hpc.train.optim import build_optimizer, lr_at_epoch, set_lr

log = logging.getLogger(__name__)

LAST = "last.pt"


def best_path(workdir: Path, epoch: int) -> Path:
    """The best epoch's weights, one file per epoch: written before ``last.pt`` names it, and older ones
    removed only after, so a crash between the two writes never leaves ``last.pt`` pointing at the wrong
    weights."""
    return workdir / f"best-{epoch}.pt"


LOWER_IS_BETTER = {"val_loss", "train_loss"}
RESUME_FIELDS = {"epoch", "state", "optimizer", "history", "best_epoch", "rng"}


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which ``last.pt`` a run may resume from. A checkpoint that cannot be read (truncated by a full disk,
    empty), that does not fit the model, or that another version of the code wrote (a fixed bug would
    otherwise live on in it) is moved aside as ``last.pt.corrupt-<time>`` and the run restarts from epoch 0:
    one bad file must not break its key for good. ``on_discard`` hears why (the run is tagged)."""

    code_version: str = ""
    resume_other_version: bool = False
    on_discard: Callable[[str], None] | None = field(default=None, compare=False)
    every_seconds: float = 0.0  # 0: after every epoch


def checkpoint_due(now: float, last_written: float, every_seconds: float, final_epoch: bool) -> bool:
    """Whether this epoch's end writes the checkpoint: the final epoch always, others once ``every_seconds``
    have passed since the last write (or since training started)."""
    return final_epoch or now - last_written >= every_seconds


class Examples(Protocol):
    """What the loop batches: ``images[indices]`` and ``labels[indices]`` go to ``task.loss``. Usually an
    :class:`~ssl_hpc.data.splits.ImageSplit` of uint8 images; a frozen backbone's cached features
    (:class:`ssl_hpc.train.feature_cache.FeatureSplit`) go through the very same loop."""

    @property
    def images(self) -> torch.Tensor: ...

    @property
    def labels(self) -> torch.Tensor: ...

    def __len__(self) -> int: ...


class TrainTask(Protocol):
    """What a method supplies to the loop."""

    module: nn.Module  # everything checkpointed

    def param_groups(self) -> Iterable[nn.Parameter] | list[dict]:
        """The parameters to optimise (frozen parts excluded)."""

    def set_train_mode(self) -> None:
        """Puts submodules in their training modes (a frozen backbone stays in eval mode)."""

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of one batch (uint8 images, or cached features) already on the device."""

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` runs from 0 to 1 over the run."""

    def validate(self) -> dict[str, float]:
        """Metrics at the end of an epoch (``val_loss``, ``val_acc``...); may be empty."""


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int | None
    workdir: Path
    resumed_after_epoch: int | None = None
    stopped_early: bool = False
    best_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Precision:
    """Where and how tensors compute: bf16 autocast and channels_last only pay off on a GPU; torch.compile
    pays off on long GPU runs (it costs a compilation per shape first)."""

    device: torch.device
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False  # torch.compile, in place (state-dict keys unchanged, so checkpoints still load)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        enabled = self.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def prepare(self, module: nn.Module) -> nn.Module:
        module = module.to(self.device)
        if self.channels_last and self.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        if self.compile:
            module.compile()
        return module


def batch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch, a pure function of (seed, epoch) so a resume replays it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Splits an order into batches; a last batch of one example is dropped (BatchNorm needs two)."""
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()
    return chunks


def is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if metric in LOWER_IS_BETTER else value > best


def fit(
    task: TrainTask,
    data: Examples,
    settings: StageSettings,
    *,
    seed: int,
    workdir: Path,
    precision: Precision,
    select_by: str = "last",
    patience: int | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    on_resume: Callable[[list[dict[str, float]]], None] | None = None,
    progress: bool = False,
    description: str = "",
    checkpoints: CheckpointPolicy = CheckpointPolicy(),
    accumulate_steps: int = 1,
) -> FitResult:
    """Trains ``task`` on ``data`` (already on the device) for ``settings.epochs`` epochs, one optimiser step
    per ``accumulate_steps`` batches (their gradients summed, each batch's loss divided by their number)."""
    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be at least 1, got {accumulate_steps}")
    workdir.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(settings, task.param_groups())
    history: list[dict[str, float]] = []
    best_epoch: int | None = None
    start_epoch = 0
    resumed_after = None
    checkpoint = resume_point(workdir, task.module, optimizer, precision.device, checkpoints)
    if checkpoint is not None:
        task.module.load_state_dict(checkpoint["state"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        history = list(checkpoint["history"])
        best_epoch = checkpoint["best_epoch"]
        torch.set_rng_state(checkpoint["rng"].cpu())
        if precision.device.type == "cuda" and checkpoint.get("cuda_rng"):
            torch.cuda.set_rng_state_all([state.cpu() for state in checkpoint["cuda_rng"]])
        resumed_after = checkpoint["epoch"]
        start_epoch = resumed_after + 1
        log.info("%s: resuming after epoch %d from %s", description, resumed_after, workdir / LAST)
        if on_resume is not None:
            on_resume(history)

    steps_per_epoch = math.ceil(len(batches(torch.arange(len(data)), settings.batch_size)) / accumulate_steps)
    total_steps = max(1, steps_per_epoch * settings.epochs)
    stopped_early = False
    unreported: list[tuple[int, dict[str, float]]] = []  # epochs no checkpoint holds yet
    unsaved_best: dict[str, torch.Tensor] | None = None  # the best epoch's weights, until a checkpoint
    last_written = time.perf_counter()
    epochs = range(start_epoch, settings.epochs)
    for epoch in tqdm(epochs, desc=description, disable=not progress, leave=False, unit="epoch"):
        if _patience_exhausted(history, best_epoch, patience):
            stopped_early = True
            break
        started = time.perf_counter()
        lr = lr_at_epoch(settings, epoch)
        set_lr(optimizer, lr)
        task.set_train_mode()
        loss_sum = torch.zeros((), device=precision.device)
        seen = 0
        chunks = batches(batch_order(len(data), seed, epoch), settings.batch_size)
        for index, indices in enumerate(chunks):
            indices = indices.to(data.images.device)
            step, within = divmod(index, accumulate_steps)  # optimiser step, batch within it
            group = min(accumulate_steps, len(chunks) - step * accumulate_steps)
            with precision.autocast:
                loss = task.loss(data.images[indices], data.labels[indices])
            if within == 0:
                optimizer.zero_grad(set_to_none=True)
            (loss / group).backward()
            if within == group - 1:
                optimizer.step()
                task.after_step((epoch * steps_per_epoch + step + 1) / total_steps)
            loss_sum += loss.detach().float() * len(indices)
            seen += len(indices)
        metrics = {"train_loss": (loss_sum / max(seen, 1)).item(), "lr": lr}
        with torch.no_grad(), precision.autocast:
            metrics.update(task.validate())
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["epoch"] = float(epoch)
        history.append(metrics)
        unreported.append((epoch, metrics))
        if select_by != "last" and is_better(
            select_by, metrics[select_by], _best_value(history, best_epoch, select_by)
        ):
            best_epoch = epoch
            unsaved_best = {name: tensor.detach().clone() for name, tensor in task.module.state_dict().items()}
        elif select_by == "last":
            best_epoch = epoch
        final = epoch == settings.epochs - 1 or _patience_exhausted(history, best_epoch, patience)
        if not checkpoint_due(time.perf_counter(), last_written, checkpoints.every_seconds, final):
            continue
        if unsaved_best is not None:  # before last.pt names it
            save_atomic(unsaved_best, best_path(workdir, best_epoch))
            unsaved_best = None
        save_atomic(
            {
                "epoch": epoch,
                "state": task.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": history,
                "best_epoch": best_epoch,
                "rng": torch.get_rng_state(),
                # MAE and AIM draw their masks on the device: a resumed GPU run replays them too
                "cuda_rng": torch.cuda.get_rng_state_all() if precision.device.type == "cuda" else [],
                "code_version": checkpoints.code_version,
            },
            workdir / LAST,
        )
        last_written = time.perf_counter()
        for stale in workdir.glob("best-*.pt"):
            if stale != best_path(workdir, best_epoch if best_epoch is not None else -1):
                stale.unlink(missing_ok=True)
        if on_epoch_end is not None:
            for reported, entry in unreported:
                on_epoch_end(reported, entry)
        unreported.clear()

    if _patience_exhausted(history, best_epoch, patience) and len(history) < settings.epochs:
        stopped_early = True
    best_state = None
    if select_by != "last" and best_epoch is not None and best_path(workdir, best_epoch).is_file():
        best_state = load_checkpoint(best_path(workdir, best_epoch), map_location=precision.device)
    return FitResult(history, best_epoch, workdir, resumed_after, stopped_early, best_state)


def resume_point(
    workdir: Path, module: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, policy: CheckpointPolicy
) -> dict | None:
    """The checkpoint to resume from, or ``None`` to start at epoch 0 (none, or one moved aside)."""
    path = workdir / LAST
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path, map_location=device)
        problem = _unusable(checkpoint, module, optimizer, policy)
    except Exception as error:  # noqa: BLE001 - truncated or foreign files fail in many ways (zip, pickle, EOF)
        problem = f"it cannot be read ({type(error).__name__}: {error or 'empty file'})"
    if problem is None:
        return checkpoint
    aside = path.with_name(f"{LAST}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    for stale in workdir.glob("best-*.pt"):  # the best epoch of the discarded history
        stale.unlink(missing_ok=True)
    reason = f"{path} {problem}; kept as {aside.name}, training restarts from epoch 0"
    log.warning("%s", reason)
    if policy.on_discard is not None:
        policy.on_discard(reason)
    return None


def _unusable(checkpoint: object, module: nn.Module, optimizer: torch.optim.Optimizer, policy: CheckpointPolicy):
    """Why ``checkpoint`` cannot be resumed from, or ``None``."""
    if not isinstance(checkpoint, dict) or not RESUME_FIELDS <= set(checkpoint):
        return "is not a training checkpoint of this code (fields missing)"
    written_by = checkpoint.get("code_version", "")
    if written_by != policy.code_version and not policy.resume_other_version:
        return (
            f"was written by code version {written_by or 'unknown'}, this is {policy.code_version or 'unknown'} "
            "(runtime.resume_other_version: true resumes it anyway)"
        )
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    found = {name: tuple(tensor.shape) for name, tensor in checkpoint["state"].items()}
    if expected != found:
        return f"does not fit the model ({len(set(expected) ^ set(found))} names and shapes differ)"
    groups = checkpoint["optimizer"].get("param_groups", [])
    if [len(group["params"]) for group in groups] != [len(group["params"]) for group in optimizer.param_groups]:
        return "does not fit the optimiser (its parameter groups differ)"
    return None


def _best_value(history: list[dict[str, float]], best_epoch: int | None, metric: str) -> float | None:
    if best_epoch is None:
        return None
    for entry in history:
        if int(entry["epoch"]) == best_epoch:
            return entry[metric]
    return None


def _patience_exhausted(history: list[dict[str, float]], best_epoch: int | None, patience: int | None) -> bool:
    if patience is None or not history or best_epoch is None:
        return False
    return int(history[-1]["epoch"]) - best_epoch >= patience
