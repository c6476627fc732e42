"""Barlow Twins (Zbontar et al., 2021) and VICReg (Bardes et al., 2022): redundancy reduction.

Both compare two projected views with a loss on their cross-correlation / variance-covariance. Each
has its own projection head as lightly builds it: Barlow Twins' (3 layers, 2048 wide here) and VICReg's
expander (``VICRegProjectionHead`` as in lightly's ResNet-18 example: 2 layers, 2048 wide; the paper's
3 x 8192 suits a ResNet-50 at 224 px, not 28 px).
"""

from __future__ import annotations

import torch
from lightly.loss import BarlowTwinsLoss, VICRegLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from lightly.models.modules.heads import VICRegProjectionHead
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
    def __init__(self, backbone, criterion: nn.Module, head: nn.Module):
        super().__init__(backbone)
        self.encoder = Encoder(backbone, head)
        self.criterion = criterion

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.criterion(self.encoder(views[0]), self.encoder(views[1]))


def barlow_twins(backbone) -> RedundancyReduction:
    head = BarlowTwinsProjectionHead(backbone.num_features, PROJECTION, PROJECTION)
    return RedundancyReduction(backbone, BarlowTwinsLoss(), head)


def vicreg(backbone) -> RedundancyReduction:
    head = VICRegProjectionHead(backbone.num_features, PROJECTION, PROJECTION, num_layers=2)
    return RedundancyReduction(backbone, VICRegLoss(), head)


register(
    MethodSpec(
        name="barlowtwins",
        needs_pretraining=True,
        description="Barlow Twins: cross-correlation of two views towards the identity",
        pretrain_defaults={**LARS_PRETRAIN, "weight_decay": 1.5e-6},
        build_pretext=lambda name, request, settings: barlow_twins(build_backbone(name, request)),
    )
)
register(
    MethodSpec(
        name="vicreg",
        needs_pretraining=True,
        description="VICReg: variance, invariance and covariance terms on two views",
        pretrain_defaults={**LARS_PRETRAIN, "weight_decay": 1e-6},
        build_pretext=lambda name, request, settings: vicreg(build_backbone(name, request)),
    )
)
