"""The method registry: every training method a sweep can name in ``grid.method``.

A method says whether it needs a pretraining stage, its default settings (the thesis's where it
gave them), and how to build its pretext module. The training loop is shared; methods plug in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MethodSpec:
    name: str
    needs_pretraining: bool
    # Methods trained end to end from the start (the supervised reference) have no fine-tune axis.
    fixed_finetune: str | None = None
    pretrain_defaults: dict[str, Any] = field(default_factory=dict)
    finetune_defaults: dict[str, Any] = field(default_factory=dict)
    build_pretext: Callable[..., Any] | None = None
    description: str = ""


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    return spec


register(
    MethodSpec(
        name="supervised",
        needs_pretraining=False,
        fixed_finetune="end_to_end",
        description="ResNet trained from scratch with labels: the thesis's reference model",
    )
)
