"""MNIST through torchvision's ``MNIST`` class, as a :class:`LabeledDataset` (the rotation report's data).

The files live in the same data root as MedMNIST's (the sweep's ``data_root``, else ``MEDMNIST_ROOT``,
else ``~/.medmnist``), where torchvision keeps them: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,
labels-idx1}-ubyte`` (or its legacy ``MNIST/processed/{training,test}.pt``). As for MedMNIST, missing
files are downloaded only when ``data.download`` allows it and torchvision's mirror answers; compute
nodes often have no network, so otherwise the error names the dataset, the folder and the files, and
says how to fetch them on a machine that has one.

MNIST has no validation split. One is carved out of the 60,000 train images once and for all:
per class, a permutation seeded by :data:`MNIST_VAL_SEED` (not the run's seed) puts
:data:`MNIST_VAL_FRACTION` of the class (rounded) in val. Every run, method and seed therefore sees
the same train / val / test images (54,000 / 6,000 / 10,000), so fusions and paired tests compare
predictions on the very same examples, and label budgets are drawn from the same train pool.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import MNIST

from ssl_hpc.config.datasets import TORCHVISION_SIZES, default_data_root
from ssl_hpc.data.medmnist import DatasetMissingError, network_available
from ssl_hpc.data.splits import ImageSplit, LabeledDataset

NAME = "mnist"
SIZE = TORCHVISION_SIZES[NAME]
CLASS_NAMES = tuple(str(digit) for digit in range(10))
MNIST_VAL_FRACTION = 0.1
MNIST_VAL_SEED = 0
DOWNLOAD_HOST = ("ossci-datasets.s3.amazonaws.com", 443)  # torchvision's first mirror


def mnist_raw_folder(root: Path) -> Path:
    """Where torchvision's ``MNIST(root)`` looks for the raw files."""
    return root / MNIST.__name__ / "raw"


def mnist_raw_files() -> tuple[str, ...]:
    """The four uncompressed files torchvision reads, named from its own resource list."""
    return tuple(Path(name).stem for name, _ in MNIST.resources)


def mnist_present(root: Path) -> bool:
    """Whether ``MNIST(root, download=False)`` will find its files (raw, or the legacy processed ones)."""
    if all((mnist_raw_folder(root) / name).is_file() for name in mnist_raw_files()):
        return True
    processed = root / MNIST.__name__ / "processed"
    return all((processed / name).is_file() for name in (MNIST.training_file, MNIST.test_file))


def ensure_mnist_files(root: Path, download: bool) -> Path:
    """Returns the folder of the raw files, downloading them first if missing and allowed.

    Raises :class:`DatasetMissingError` (the error the command line reports for MedMNIST too).
    """
    folder = mnist_raw_folder(root)
    if mnist_present(root):
        return folder
    failure = ""
    if download and network_available(DOWNLOAD_HOST):
        try:
            MNIST(str(root), train=True, download=True)  # fetches and unpacks all four files
        except (RuntimeError, OSError) as error:
            failure = f" (the download failed: {str(error).strip().splitlines()[0]})"
        if mnist_present(root):
            return folder
    if not download:
        reason = "downloading is turned off (data.download: false)"
    elif failure:
        reason = "it could not be downloaded" + failure
    else:
        reason = "the network is not reachable"
    raise DatasetMissingError(
        f"dataset {NAME!r}: the MNIST files {', '.join(mnist_raw_files())} are missing from {folder} and "
        f"{reason}. On a machine with network (e.g. the login node) run "
        f"`python -c \"from torchvision.datasets import MNIST; MNIST('{root}', download=True)\"` "
        f"(or copy the four files there), or point MEDMNIST_ROOT (or the sweep's data_root) at the folder "
        f"that holds MNIST/raw/."
    )


def mnist_val_indices(labels: np.ndarray) -> np.ndarray:
    """Sorted indices of the train images that form the validation split (stratified, seeded, fixed)."""
    rng = np.random.default_rng(MNIST_VAL_SEED)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(np.floor(len(members) * MNIST_VAL_FRACTION + 0.5))
        if len(members) - count < 1:
            raise ValueError(f"MNIST class {cls} has {len(members)} train images: too few to carve a val split")
        chosen.append(members[rng.permutation(len(members))[:count]])
    return np.sort(np.concatenate(chosen))


def load_mnist(size: int = SIZE, root: Path | None = None, download: bool = True) -> LabeledDataset:
    """MNIST's train (less the carved val), val and test splits as uint8 ``[N, 1, 28, 28]`` tensors."""
    if size != SIZE:
        raise ValueError(f"MNIST comes in {SIZE} px only, got size {size}; model.input_size resizes for the network")
    root = root if root is not None else default_data_root()
    ensure_mnist_files(root, download)
    train = _split(MNIST(str(root), train=True, download=False))
    test = _split(MNIST(str(root), train=False, download=False))
    in_val = np.zeros(len(train), dtype=bool)
    in_val[mnist_val_indices(train.labels.numpy())] = True
    return LabeledDataset(
        name=NAME,
        class_names=CLASS_NAMES,
        train=train.subset(torch.from_numpy(np.flatnonzero(~in_val))),
        val=train.subset(torch.from_numpy(np.flatnonzero(in_val))),
        test=test,
    )


def _split(dataset: MNIST) -> ImageSplit:
    images = torch.as_tensor(dataset.data, dtype=torch.uint8).unsqueeze(1).contiguous()
    return ImageSplit(images, torch.as_tensor(dataset.targets, dtype=torch.int64))
