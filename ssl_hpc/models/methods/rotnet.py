"""RotNet (Gidaris et al., 2018): predict which of 0/90/180/270 degrees an image was rotated by.

Every image of the batch is shown at all four rotations, as in the rotation-prediction report.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import PretextModel
from ssl_hpc.models.methods.registry import MethodSpec, register

ROTATIONS = 4


def rotated_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch at 0, 90, 180 and 270 degrees, and the rotation labels 0..3."""
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(ROTATIONS)])
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return rotated, labels


class RotNet(PretextModel):
    def __init__(self, backbone):
        super().__init__(backbone)
        self.classifier = nn.Linear(backbone.num_features, ROTATIONS)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        images, labels = rotated_batch(views[0])
        return F.cross_entropy(self.classifier(self.backbone(images)).float(), labels)


register(
    MethodSpec(
        name="rotnet",
        needs_pretraining=True,
        description="RotNet: 4-way rotation prediction",
        views=1,
        view_preset="crop_flip",
        pretrain_defaults={
            "optimizer": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cosine",
            "min_lr": 0.0,
            "crop_scale_min": 0.6,
        },
        build_pretext=lambda name, request, settings: RotNet(build_backbone(name, request)),
    )
)
