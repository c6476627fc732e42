"""The method registry: every training method a sweep can name in ``grid.method``.

A method says whether it needs a pretraining stage, which backbones it can train, how its views
are made, its default settings (the thesis's where it gave them) and how to build its pretext
model. The training loop is shared; methods plug in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs_pretraining: bool
    description: str = ""
    # Methods trained end to end from the start (the supervised reference) have no fine-tune axis.
    fixed_finetune: str | None = None
    backbone_families: tuple[str, ...] | None = None  # None: any backbone
    views: int = 2
    view_preset: str = "contrastive"
    pretrain_defaults: dict[str, Any] = field(default_factory=dict)
    finetune_defaults: dict[str, Any] = field(default_factory=dict)
    model_defaults: dict[str, Any] = field(default_factory=dict)
    # build(backbone_name, BackboneRequest, PretrainSettings) -> PretextModel
    build_pretext: Callable[..., Any] | None = None


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    return spec


# Defaults shared by the contrastive family; the thesis trained SimCLR and MoCo v2 with SGD at lr 0.06.
SGD_PRETRAIN = {
    "optimizer": "sgd",
    "lr": 0.06,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "min_lr": 0.0,
}
# ... and AIM and MAE with AdamW at 1.5e-4, here with the linear warm-up both papers use (MAE: 40 of 800
# epochs, AIM likewise) scaled to the thesis's 100 epochs: a transformer trained with AdamW from a cold start
# at full lr is what the warm-up exists to avoid.
ADAMW_PRETRAIN = {
    "optimizer": "adamw",
    "lr": 1.5e-4,
    "weight_decay": 0.05,
    "schedule": "cosine",
    "min_lr": 0.0,
    "warmup_epochs": 5,
}
