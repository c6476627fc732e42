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


VIEW_PRESETS = ("contrastive", "crop_flip")
MODALITIES = ("natural", "stain", "xray")
# Smallest crop (share of the image) of the contrastive views per modality: at 28 px a 0.2-area crop is
# ~12 px and often cuts a blood cell or a lesion off; natural images keep the sweep's crop_scale_min.
MIN_CROP_SCALE = {"natural": 0.0, "stain": 0.5, "xray": 0.5}


def view_augmentation(
    preset: str,
    image_size: int,
    channels: int,
    crop_scale_min: float = 0.2,
    color_jitter: float = 0.4,
    gray_scale_prob: float = 0.2,
    blur_prob: float = 0.0,
    modality: str = "natural",
) -> nn.Module:
    """Random views for self-supervised pretraining, drawn independently for every sample.

    ``contrastive`` is SimCLR's recipe (random resized crop, flip, colour jitter with p=0.8,
    random grayscale, optional blur -- the thesis used none at 28 px); on 1-channel images only
    brightness and contrast are jittered. ``crop_flip`` is the masked-image-modelling recipe
    (MAE, AIM): crop and flip only.

    ``modality`` adapts the contrastive views to what carries the diagnosis: ``stain`` (stained
    microscopy, dermoscopy) jitters no hue and never turns images gray -- stain colour is the signal --
    and adds right-angle rotations and vertical flips (a cell has no up); ``xray`` jitters no colour and
    flips only left-right (anatomy has an up). Both crop no smaller than half the image.
    """
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; accepted: {', '.join(MODALITIES)}")
    scale_min = max(crop_scale_min, MIN_CROP_SCALE[modality]) if preset == "contrastive" else crop_scale_min
    crop = K.RandomResizedCrop((image_size, image_size), scale=(scale_min, 1.0))
    if preset == "crop_flip":
        return K.AugmentationSequential(crop, K.RandomHorizontalFlip())
    if preset != "contrastive":
        raise ValueError(f"unknown view preset {preset!r}; accepted: {', '.join(VIEW_PRESETS)}")
    colour = channels == 3
    saturation = color_jitter if colour and modality != "xray" else 0.0
    hue = color_jitter / 4 if colour and modality == "natural" else 0.0
    steps: list[nn.Module] = [
        crop,
        K.RandomHorizontalFlip(),
        K.ColorJitter(color_jitter, color_jitter, saturation, hue, p=0.8),
    ]
    if modality == "stain":
        steps += [K.RandomVerticalFlip(), K.RandomRotation90(times=(0, 3), p=1.0)]
    if colour and gray_scale_prob > 0 and modality == "natural":
        steps.append(K.RandomGrayscale(p=gray_scale_prob))
    if blur_prob > 0:
        kernel = max(3, (image_size // 10) | 1)
        steps.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_prob))
    return K.AugmentationSequential(*steps)
