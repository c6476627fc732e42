"""Optimisers and learning-rate schedules from :class:`StageSettings`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from lightly.utils.lars import LARS

from ssl_hpc.config import StageSettings


def build_optimizer(
    settings: StageSettings, params: Iterable[torch.nn.Parameter] | list[dict]
) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "lars":  # SGD with layer-wise trust ratios: Barlow Twins' and VICReg's optimiser
        return LARS(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; accepted: sgd, lars, adam, adamw")


def lr_at_epoch(settings: StageSettings, epoch: int) -> float:
    """The learning rate used during ``epoch`` (0-based).

    ``step`` is the thesis's schedule: multiplied by ``step_gamma`` every ``step_epochs`` epochs,
    never below ``min_lr``. ``cosine`` anneals from ``lr`` to ``min_lr`` over the run. Both start
    with ``warmup_epochs`` of linear warm-up.
    """
    base = settings.lr
    if epoch < settings.warmup_epochs:
        return base * (epoch + 1) / settings.warmup_epochs
    if settings.schedule == "constant":
        return base
    if settings.schedule == "step":
        return max(base * settings.step_gamma ** (epoch // settings.step_epochs), min(settings.min_lr, base))
    if settings.schedule == "cosine":
        span = max(1, settings.epochs - settings.warmup_epochs)
        progress = min(1.0, (epoch - settings.warmup_epochs) / span)
        floor = min(settings.min_lr, base)
        return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {settings.schedule!r}; accepted: step, cosine, constant")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
