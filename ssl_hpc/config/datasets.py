"""The datasets a sweep can name: MedMNIST's 2D datasets, MNIST, and image folders it declares itself.

MedMNIST's names are written out here rather than read from the ``medmnist`` package, which imports
torch: a sweep is validated without it. ``tests/test_config.py`` checks the table against
``medmnist.INFO``, so a new MedMNIST release cannot slip by unnoticed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, StrictFloat, StrictInt, field_validator, model_validator

from ssl_hpc.config.base import Strict, Text

# name -> MedMNIST's task type
MEDMNIST_2D_TASKS: dict[str, str] = {
    "pathmnist": "multi-class",
    "chestmnist": "multi-label, binary-class",
    "dermamnist": "multi-class",
    "octmnist": "multi-class",
    "pneumoniamnist": "binary-class",
    "retinamnist": "ordinal-regression",
    "breastmnist": "binary-class",
    "bloodmnist": "multi-class",
    "tissuemnist": "multi-class",
    "organamnist": "multi-class",
    "organcmnist": "multi-class",
    "organsmnist": "multi-class",
}
MEDMNIST_2D: tuple[str, ...] = tuple(MEDMNIST_2D_TASKS)
# What the images are, for the views of self-supervised pretraining (ssl_hpc.data.augment): stained
# microscopy and dermoscopy carry the diagnosis in their colours, X-rays have an up and a down.
MEDMNIST_MODALITY = {
    "bloodmnist": "stain",
    "dermamnist": "stain",
    "pathmnist": "stain",
    "tissuemnist": "stain",
    "pneumoniamnist": "xray",
    "chestmnist": "xray",
}
SINGLE_LABEL: tuple[str, ...] = tuple(n for n, task in MEDMNIST_2D_TASKS.items() if not task.startswith("multi-label"))
# Datasets read through torchvision's dataset classes from the same data root (ssl_hpc.data.mnist):
# name -> the only image size they come in. MNIST (the rotation-prediction report's data) is 28 px, 1 channel,
# 10 classes; its validation split is carved from train (ssl_hpc.data.mnist.MNIST_VAL_FRACTION).
TORCHVISION_SIZES: dict[str, int] = {"mnist": 28}
# Every built-in name a grid may use (image folders add their own).
BUILTIN_DATASETS: tuple[str, ...] = (*SINGLE_LABEL, *TORCHVISION_SIZES)
RESERVED_NAMES: tuple[str, ...] = (*MEDMNIST_2D, *TORCHVISION_SIZES)
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_NAME = re.compile(r"^[^/\\]+$")


def dataset_modality(name: str, spec: ImageFolderSpec | None = None) -> str:
    """The modality of a dataset of the sweep: an image folder's own, else MedMNIST's, else ``natural``."""
    return spec.modality if spec is not None else MEDMNIST_MODALITY.get(name, "natural")


def default_data_root(configured: str | Path | None = None) -> Path:
    """The sweep's ``data_root`` if set, else ``MEDMNIST_ROOT``, else ``~/.medmnist``."""
    root = configured or os.environ.get("MEDMNIST_ROOT") or "~/.medmnist"
    return Path(root).expanduser().resolve()


class ImageFolderSpec(Strict):
    """A dataset kept as image files, declared in a sweep under ``datasets: {<name>: {...}}``."""

    kind: Literal["image_folder"] = "image_folder"
    root: Text = Field(min_length=1)
    layout: Literal["auto", "split_folders", "class_folders"] = "auto"
    classes: tuple[str, ...] | None = None
    channels: Literal[1, 3] = 1
    resize: Literal["stretch", "center_crop"] = "stretch"
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    # split_folders layout
    split_folders: tuple[str, str, str] = ("train", "val", "test")
    val_from_train: StrictFloat | None = Field(None, gt=0, lt=1)
    # class_folders layout
    split_fractions: tuple[StrictFloat, StrictFloat, StrictFloat] = (0.7, 0.1, 0.2)
    split_seed: StrictInt = 0
    # images and masks inside each class folder
    images_subdir: Text | None = None
    masks_subdir: Text | None = None
    mask_root: Text | None = None
    mask_suffix: Text = ""
    # what the images are (see MEDMNIST_MODALITY): chooses the pretraining views when pretrain.modality is auto
    modality: Literal["natural", "stain", "xray"] = "natural"

    @field_validator("classes")
    @classmethod
    def _classes(cls, values: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if values is None:
            return values
        if len(values) < 2:
            raise ValueError(f"a classification dataset needs at least 2 classes, got {list(values)}")
        if len(set(values)) != len(values):
            raise ValueError(f"repeated class names in {list(values)}")
        for value in values:
            if not _NAME.match(value) or value.startswith("."):
                raise ValueError(f"class {value!r} must be a folder name (no '/', not hidden)")
        return values

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values:
            raise ValueError(f"give at least one extension, e.g. {list(IMAGE_EXTENSIONS)}")
        return tuple(sorted({("." + v.lstrip(".")).lower() for v in values}))

    @field_validator("split_fractions")
    @classmethod
    def _fractions(cls, values: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions (train, val, test) must be positive and sum to 1, got {list(values)}")
        return values

    @field_validator("split_folders")
    @classmethod
    def _split_folders(cls, values: tuple[str, str, str]) -> tuple[str, str, str]:
        if len(set(values)) != 3 or not all(_NAME.match(v) for v in values):
            raise ValueError(f"split_folders must be 3 distinct folder names (train, val, test), got {list(values)}")
        return values

    @field_validator("images_subdir", "masks_subdir")
    @classmethod
    def _subdir(cls, value: str | None) -> str | None:
        if value is not None and (not _NAME.match(value) or value in (".", "..")):
            raise ValueError(f"{value!r} must be the name of a folder inside each class folder (no '/')")
        return value

    @model_validator(mode="after")
    def _masks(self) -> ImageFolderSpec:
        if self.masks_subdir is not None and self.mask_root is not None:
            raise ValueError(
                "give masks_subdir (masks inside each class folder) or mask_root (a separate tree), not both"
            )
        if self.mask_suffix and not self.has_masks:
            raise ValueError("mask_suffix needs masks_subdir or mask_root")
        if self.masks_subdir is not None and self.masks_subdir == self.images_subdir:
            raise ValueError("masks_subdir and images_subdir must differ")
        if self.layout == "class_folders" and self.val_from_train is not None:
            raise ValueError("val_from_train applies to the split_folders layout; class_folders use split_fractions")
        return self

    @property
    def has_masks(self) -> bool:
        return self.masks_subdir is not None or self.mask_root is not None

    def resolve(self, path: str, data_root: Path | None) -> Path:
        """``path`` (``root`` or ``mask_root``) as an absolute path: relative ones are under the data root."""
        candidate = Path(path).expanduser()
        if candidate.is_absolute():
            return candidate
        return (default_data_root(data_root) / candidate).resolve()
