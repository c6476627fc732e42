"""The pretext task: what the training loop needs to pretrain a backbone without labels."""

from __future__ import annotations

import torch
from torch import nn

from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.models.methods.base import PretextModel


class PretextTask:
    """Makes ``views`` random views of every image on the device and hands them to the method.

    Views are drawn independently per sample by batched augmentation, so the two views of one
    image differ, and differ from those of every other image of the batch.
    """

    def __init__(self, model: PretextModel, preprocess: nn.Module, augment: nn.Module, views: int):
        self.module = model
        self.preprocess = preprocess
        self.augment = augment
        self.views = views

    def make_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        batch = to_unit_float(images)
        return [self.preprocess(self.augment(batch)) for _ in range(self.views)]

    def param_groups(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        self.module.train()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.module.loss(self.make_views(images))

    def after_step(self, progress: float) -> None:
        self.module.after_step(progress)

    def validate(self) -> dict[str, float]:
        return {}
