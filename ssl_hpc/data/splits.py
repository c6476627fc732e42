"""The in-memory form every dataset takes: whole splits as uint8 tensors.

Images at 28-224 px are tiny, so the input pipeline, not the network, is what costs. Keeping a
split as one ``uint8`` tensor lets it move to the training device once; batches are then plain
indexing, and augmentation runs on whole batches there (see :mod:`ssl_hpc.data.augment`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class ImageSplit:
    """``images``: uint8 ``[N, C, H, W]``; ``labels``: int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape [{self.images.shape[0]}], got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor) -> ImageSplit:
        return ImageSplit(self.images[indices], self.labels[indices])

    def to(self, device: torch.device | str) -> ImageSplit:
        return ImageSplit(self.images.to(device), self.labels.to(device))

    def digest(self) -> str:
        """A fingerprint of the examples and their order: predictions saved with it can only be
        combined with predictions on the very same examples in the very same order."""
        hasher = hashlib.sha256()
        hasher.update(self.images.cpu().contiguous().numpy().tobytes())
        hasher.update(self.labels.cpu().contiguous().numpy().tobytes())
        return hasher.hexdigest()[:16]


@dataclass(frozen=True)
class LabeledDataset:
    """A dataset's three splits and what the rest of the pipeline needs to know about it."""

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    # Optional region masks (image folders with lung masks): split -> uint8/bool [N, 1, H, W], paired
    # with the split's images by index. Not part of equality or the repr.
    masks: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.masks is None:
            return
        for split, mask in self.masks.items():
            images = getattr(self, split, None)
            if not isinstance(images, ImageSplit):
                raise ValueError(f"masks for unknown split {split!r}; accepted: train, val, test")
            expected = (len(images), 1, *images.images.shape[-2:])
            if mask.dtype not in (torch.uint8, torch.bool) or tuple(mask.shape) != expected:
                raise ValueError(
                    f"{split} masks must be uint8/bool {list(expected)}, got {mask.dtype} {list(mask.shape)}"
                )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]
