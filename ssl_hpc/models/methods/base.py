"""What every pretext model shares: a backbone being pretrained, and momentum helpers."""

from __future__ import annotations

import copy

import torch
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssl_hpc.models.backbones import Backbone


class PretextModel(nn.Module):
    """A backbone plus what its method trains alongside it.

    Subclasses implement :meth:`loss` on a list of views (float, already preprocessed for the
    backbone); the views are made by the training task, so every method gets the same batched,
    on-device augmentation.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with the run's progress in [0, 1]."""

    def backbone_loaded(self) -> None:
        """Weights were loaded into ``self.backbone`` after construction (continued pretraining from
        ImageNet or a file): momentum teachers copied the random initialisation, so they take the
        loaded weights too, or the first thousands of steps would chase a random target."""
        for module in self.modules():
            if isinstance(module, MomentumTeacher) and isinstance(module.teacher, Encoder):
                module.teacher[0].load_state_dict(self.backbone.state_dict())


class MomentumTeacher(nn.Module):
    """A slowly moving copy of a module (MoCo, BYOL, DINO), updated with a cosine momentum schedule."""

    def __init__(self, student: nn.Module, start: float = 0.996, end: float = 1.0, teacher: nn.Module | None = None):
        super().__init__()
        # ``teacher``: an architecture twin, for modules deepcopy cannot copy (weight-normed heads).
        self.teacher = copy.deepcopy(student) if teacher is None else teacher
        deactivate_requires_grad(self.teacher)
        self.start, self.end = start, end

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.teacher(*args, **kwargs)

    def update(self, student: nn.Module, progress: float) -> None:
        momentum = cosine_schedule(int(progress * 10_000), 10_000, self.start, self.end)
        update_momentum(student, self.teacher, m=momentum)


class Encoder(nn.Sequential):
    """backbone -> head, as one module so a momentum copy can be taken of both."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__(backbone, head)
