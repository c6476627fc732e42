"""Batched augmentation on the training device (kornia), random per sample.

Whole batches are augmented at once where they already live (the GPU on a cluster): at 28-64 px a
per-sample PIL pipeline in a DataLoader, not the network, is what limits throughput.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    return images.float().div_(255.0)


def classification_augmentation(name: str, image_size: int) -> nn.Module | None:
    """Named presets for supervised training; ``none`` (the thesis's choice) returns ``None``."""
    if name == "none":
        return None
    if name == "flip":
        return K.AugmentationSequential(K.RandomHorizontalFlip())
    if name == "crop_flip":
        return K.AugmentationSequential(
            K.RandomCrop((image_size, image_size), padding=max(1, image_size // 8), padding_mode="reflect"),
            K.RandomHorizontalFlip(),
        )
    raise ValueError(f"unknown augmentation {name!r}; accepted: none, flip, crop_flip")
