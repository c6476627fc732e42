"""BYOL (Grill et al., 2020): an online network predicts a momentum target; no negatives."""

from __future__ import annotations

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import Encoder, MomentumTeacher, PretextModel
from ssl_hpc.models.methods.registry import SGD_PRETRAIN, MethodSpec, register


class BYOL(PretextModel):
    def __init__(self, backbone):
        super().__init__(backbone)
        self.encoder = Encoder(backbone, BYOLProjectionHead(backbone.num_features, 1024, 256))
        self.predictor = BYOLPredictionHead(256, 1024, 256)
        self.target = MomentumTeacher(self.encoder, start=0.99, end=1.0)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        online = [self.predictor(self.encoder(view)) for view in views]
        target = [self.target(view) for view in views]
        return 0.5 * (self.criterion(online[0], target[1]) + self.criterion(online[1], target[0]))

    def after_step(self, progress: float) -> None:
        self.target.update(self.encoder, progress)


register(
    MethodSpec(
        name="byol",
        needs_pretraining=True,
        description="BYOL: online predictor against a momentum target",
        pretrain_defaults=SGD_PRETRAIN,
        build_pretext=lambda name, request, settings: BYOL(build_backbone(name, request)),
    )
)
