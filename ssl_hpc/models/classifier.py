"""A backbone with a classification head, fed float images in [0, 1].

The model owns its input preprocessing (channel expansion, resizing, the backbone's own
normalisation), so training, evaluation and CAMs can never disagree about it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.models.backbones import Backbone


class Preprocess(nn.Module):
    """[0, 1] images with the dataset's channels -> what the backbone was built for."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int | None = None,
    ):
        super().__init__()
        if in_channels not in (1, out_channels):
            raise ValueError(f"cannot feed {in_channels}-channel images to a {out_channels}-channel backbone")
        self.in_channels, self.out_channels, self.size = in_channels, out_channels, size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != self.out_channels:
            images = images.expand(-1, self.out_channels, -1, -1)
        if self.size is not None and images.shape[-1] != self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (images - self.mean) / self.std


def build_head(kind: str, in_features: int, num_classes: int, hidden: int = 512) -> nn.Module:
    """``linear``, or the thesis's 2-layer MLP head used on frozen backbones."""
    if kind == "linear":
        return nn.Linear(in_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
    raise ValueError(f"unknown head {kind!r}; accepted: linear, mlp")


class Classifier(nn.Module):
    def __init__(self, preprocess: Preprocess, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.backbone = backbone
        self.head = head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
