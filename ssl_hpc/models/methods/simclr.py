"""SimCLR (Chen et al., 2020): two views of each image attract, other images repel (NT-Xent)."""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import Encoder, PretextModel
from ssl_hpc.models.methods.registry import SGD_PRETRAIN, MethodSpec, register


class SimCLR(PretextModel):
    def __init__(self, backbone, temperature: float = 0.5):
        super().__init__(backbone)
        features = backbone.num_features
        self.encoder = Encoder(backbone, SimCLRProjectionHead(features, features, 128))
        self.criterion = NTXentLoss(temperature=temperature)

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.criterion(self.encoder(views[0]), self.encoder(views[1]))


register(
    MethodSpec(
        name="simclr",
        needs_pretraining=True,
        description="SimCLR: contrastive, NT-Xent over two augmented views",
        pretrain_defaults=SGD_PRETRAIN,
        build_pretext=lambda name, request, settings: SimCLR(build_backbone(name, request)),
    )
)
