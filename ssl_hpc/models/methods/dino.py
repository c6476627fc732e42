"""DINO (Caron et al., 2021): self-distillation from a momentum teacher, two global views.

The multi-crop local views of the paper are left out: at 28-64 px they cost more than they give,
and every method here sees the same two views. The last layer of the head is not frozen during
the first epoch (the loop has no hook between backward and step); DINO trains without it too.
"""

from __future__ import annotations

import copy

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import Encoder, MomentumTeacher, PretextModel
from ssl_hpc.models.methods.registry import MethodSpec, register

OUTPUT_DIM = 2048


class DINO(PretextModel):
    def __init__(self, backbone, epochs: int):
        super().__init__(backbone)
        self.student = Encoder(backbone, DINOProjectionHead(backbone.num_features, 512, 64, OUTPUT_DIM))
        # DINO's teacher head starts from its own initialisation (as in lightly's example).
        twin = Encoder(copy.deepcopy(backbone), DINOProjectionHead(backbone.num_features, 512, 64, OUTPUT_DIM))
        self.teacher = MomentumTeacher(self.student, start=0.996, end=1.0, teacher=twin)
        # The teacher temperature warms up from 0.04 to 0.07 over the first 30 epochs (DINO paper, section 4.1 and
        # its ViT recipe); lightly's defaults (0.04 -> 0.04) would warm up nothing. Short runs warm up over all
        # but their last epoch.
        self.criterion = DINOLoss(
            output_dim=OUTPUT_DIM,
            warmup_teacher_temp=0.04,
            teacher_temp=0.07,
            warmup_teacher_temp_epochs=min(30, max(0, epochs - 1)),
        )
        self.epochs = max(1, epochs)
        # In the state dict, so a resumed run continues the teacher-temperature warm-up where it stopped.
        self.register_buffer("progress", torch.zeros(()))

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        teacher = [self.teacher(view) for view in views]
        student = [self.student(view) for view in views]
        return self.criterion(teacher, student, epoch=int(float(self.progress) * self.epochs))

    def after_step(self, progress: float) -> None:
        self.progress.fill_(progress)
        self.teacher.update(self.student, progress)


register(
    MethodSpec(
        name="dino",
        needs_pretraining=True,
        description="DINO: self-distillation with a momentum teacher (two global views)",
        pretrain_defaults={"optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.04, "schedule": "cosine", "min_lr": 0.0},
        build_pretext=lambda name, request, settings: DINO(build_backbone(name, request), settings.epochs),
    )
)
