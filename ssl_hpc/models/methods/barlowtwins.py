"""Barlow Twins (Zbontar et al., 2021) and VICReg (Bardes et al., 2022): redundancy reduction.

Both compare two projected views with a loss on their cross-correlation / variance-covariance;
they share the projection head (as lightly's examples do) and differ only in the loss.
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss, VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from torch import nn

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import Encoder, PretextModel
from ssl_hpc.models.methods.registry import MethodSpec, register

PROJECTION = 2048
# Both papers train with LARS and a small weight decay (Barlow Twins: lr 0.2, wd 1.5e-6; VICReg: base lr
# 0.2 x batch/256, wd 1e-6), here at the thesis's batch of 128. Plain SGD at the contrastive methods'
# lr 0.06 diverges for VICReg within ~20 steps (its variance term's gradient explodes).
LARS_PRETRAIN = {"optimizer": "lars", "lr": 0.1, "momentum": 0.9, "schedule": "cosine", "min_lr": 0.0}


class RedundancyReduction(PretextModel):
    def __init__(self, backbone, criterion: nn.Module):
        super().__init__(backbone)
        self.encoder = Encoder(backbone, BarlowTwinsProjectionHead(backbone.num_features, PROJECTION, PROJECTION))
        self.criterion = criterion

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.criterion(self.encoder(views[0]), self.encoder(views[1]))


register(
    MethodSpec(
        name="barlowtwins",
        needs_pretraining=True,
        description="Barlow Twins: cross-correlation of two views towards the identity",
        pretrain_defaults={**LARS_PRETRAIN, "weight_decay": 1.5e-6},
        build_pretext=lambda name, request, settings: RedundancyReduction(
            build_backbone(name, request), BarlowTwinsLoss()
        ),
    )
)
register(
    MethodSpec(
        name="vicreg",
        needs_pretraining=True,
        description="VICReg: variance, invariance and covariance terms on two views",
        pretrain_defaults={**LARS_PRETRAIN, "weight_decay": 1e-6},
        build_pretext=lambda name, request, settings: RedundancyReduction(build_backbone(name, request), VICRegLoss()),
    )
)
