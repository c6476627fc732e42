"""MoCo v2 (Chen et al., 2020): queries against keys from a momentum encoder and a memory bank.

The memory bank holds 4096 negatives, as in the thesis; the temperature is MoCo v2's 0.2.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import MoCoProjectionHead

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import Encoder, MomentumTeacher, PretextModel
from ssl_hpc.models.methods.registry import SGD_PRETRAIN, MethodSpec, register

MEMORY_BANK = 4096
PROJECTION = 128


class MoCoV2(PretextModel):
    def __init__(self, backbone, memory_bank: int = MEMORY_BANK, temperature: float = 0.2):
        super().__init__(backbone)
        features = backbone.num_features
        self.encoder = Encoder(backbone, MoCoProjectionHead(features, features, PROJECTION))
        self.momentum_encoder = MomentumTeacher(self.encoder, start=0.99, end=1.0)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(memory_bank, PROJECTION))

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        query = self.encoder(views[0])
        key = self.momentum_encoder(views[1])
        return self.criterion(query, key)

    def after_step(self, progress: float) -> None:
        self.momentum_encoder.update(self.encoder, progress)


register(
    MethodSpec(
        name="mocov2",
        needs_pretraining=True,
        description="MoCo v2: momentum encoder, memory bank of 4096 negatives",
        pretrain_defaults=SGD_PRETRAIN,
        build_pretext=lambda name, request, settings: MoCoV2(build_backbone(name, request)),
    )
)
