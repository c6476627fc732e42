"""MedMNIST 2D datasets through the ``medmnist`` package, as :class:`LabeledDataset`.

Files are looked up in the data root (``MEDMNIST_ROOT``, default ``~/.medmnist``). A missing file
is downloaded only when allowed and the network answers: compute nodes often have none, so the
error says which file is missing and where to put it (fetch it on the login node).
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
from medmnist import INFO

from ssl_hpc.config.datasets import MEDMNIST_2D, default_data_root
from ssl_hpc.data.splits import ImageSplit, LabeledDataset

SIZES = (28, 64, 128, 224)
DOWNLOAD_HOST = ("zenodo.org", 443)


class DatasetMissingError(FileNotFoundError):
    """The dataset file is not in the data root and could not be downloaded."""


def medmnist_filename(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def network_available(host: tuple[str, int] = DOWNLOAD_HOST, timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def ensure_medmnist_file(name: str, size: int, root: Path, download: bool) -> Path:
    """Returns the path of the dataset file, downloading it first if missing and allowed."""
    if name not in MEDMNIST_2D:
        raise ValueError(f"unknown MedMNIST dataset {name!r}; accepted: {', '.join(MEDMNIST_2D)}")
    if size not in SIZES:
        raise ValueError(f"size {size} not available for MedMNIST; accepted: {', '.join(map(str, SIZES))}")
    path = root / medmnist_filename(name, size)
    if path.is_file():
        return path
    url = INFO[name]["url" if size == 28 else f"url_{size}"]
    if download and network_available():
        root.mkdir(parents=True, exist_ok=True)
        dataset_class = _medmnist_class(name)
        dataset_class(split="train", root=str(root), size=size, download=True)
        if path.is_file():
            return path
    reason = "downloading is turned off (data.download: false)" if not download else "the network is not reachable"
    raise DatasetMissingError(
        f"dataset file {path.name} is missing from {root} and {reason}. "
        f"Download {url} on a machine with network (e.g. the login node) and put it in {root}, "
        "or point MEDMNIST_ROOT (or the sweep's data_root) at the folder that holds it."
    )


def load_medmnist(name: str, size: int = 28, root: Path | None = None, download: bool = True) -> LabeledDataset:
    """Loads all three splits as uint8 ``[N, C, H, W]`` tensors with int64 labels."""
    root = root if root is not None else default_data_root()
    path = ensure_medmnist_file(name, size, root, download)
    with np.load(path) as arrays:
        splits = {
            split: _as_split(arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in ("train", "val", "test")
        }
    labels = INFO[name]["label"]
    class_names = tuple(labels[str(i)] for i in range(len(labels)))
    return LabeledDataset(name=name, class_names=class_names, **splits)


def _as_split(images: np.ndarray, labels: np.ndarray) -> ImageSplit:
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2).contiguous()
    return ImageSplit(tensor, torch.from_numpy(labels.reshape(len(labels), -1)[:, 0].astype(np.int64)))


def _medmnist_class(name: str):
    import medmnist

    return getattr(medmnist, INFO[name]["python_class"])
