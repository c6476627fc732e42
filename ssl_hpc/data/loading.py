"""Which loader a dataset name goes to, and a per-process cache so a sweep's runs share loads.

A name declared under the sweep's ``datasets:`` is an image folder
(:func:`ssl_hpc.data.image_folder.load_image_folder`); ``mnist`` is torchvision's MNIST
(:func:`ssl_hpc.data.mnist.load_mnist`); any other name is a MedMNIST dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from ssl_hpc.data.duplicates import (
    DEFAULT_MIN_CORRELATION,
    DEFAULT_THRESHOLD,
    DuplicateReport,
    LeakageError,
    LeakageMode,
    duplicate_report,
)
from ssl_hpc.data.duplicates.cache import cached_duplicate_report
from ssl_hpc.data.image_folder import ImageFolderSpec, index_image_folder, load_image_folder
from ssl_hpc.data.medmnist import ensure_medmnist_file, load_medmnist, medmnist_filename
from ssl_hpc.data.mnist import NAME as MNIST_NAME
from ssl_hpc.data.mnist import ensure_mnist_files, load_mnist, mnist_raw_folder
from ssl_hpc.data.splits import LabeledDataset


class DatasetCache:
    """Each (dataset, size) is read from disk once per process, however many runs use it.

    ``datasets``: the sweep's declared image folders (name -> spec). ``cache_dir``: where decoded
    image folders are cached (default ``<data_root>/.ssl_hpc_cache``, or ``~/.cache/ssl_hpc``).
    """

    def __init__(
        self, data_root: Path, datasets: Mapping[str, ImageFolderSpec] | None = None, cache_dir: Path | None = None
    ):
        self.data_root = data_root
        self.datasets = dict(datasets or {})
        self.cache_dir = cache_dir
        self._loaded: dict[tuple[str, int], LabeledDataset] = {}
        self._reports: dict[tuple, DuplicateReport] = {}
        self._fingerprints: dict[tuple[str, int], str] = {}

    def get(self, name: str, size: int, download: bool = True) -> LabeledDataset:
        key = (name, size)
        if key not in self._loaded:
            spec = self.datasets.get(name)
            if spec is not None:
                self._loaded[key] = load_image_folder(name, spec, size, self.cache_dir, data_root=self.data_root)
            elif name == MNIST_NAME:
                self._loaded[key] = load_mnist(size, self.data_root, download=download)
            else:
                self._loaded[key] = load_medmnist(name, size, self.data_root, download=download)
        return self._loaded[key]

    def source(self, name: str, size: int) -> str:
        """Where ``name`` at ``size`` is read from (a file or a folder), for the run's MLflow dataset input:
        someone looking at a run sees which file it trained on."""
        spec = self.datasets.get(name)
        if spec is not None:
            return str(spec.resolve(spec.root, self.data_root))
        if name == MNIST_NAME:
            return str(mnist_raw_folder(self.data_root))
        return str(self.data_root / medmnist_filename(name, size))

    def fingerprint(self, name: str, size: int, download: bool = True) -> str:
        """A digest of the three splits' examples and order (:meth:`ImageSplit.digest`), computed once per
        process: two runs with the same fingerprint saw the very same data, whatever the file is called."""
        key = (name, size)
        if key not in self._fingerprints:
            dataset = self.get(name, size, download)
            parts = ",".join(f"{split}:{getattr(dataset, split).digest()}" for split in ("train", "val", "test"))
            self._fingerprints[key] = hashlib.sha256(parts.encode()).hexdigest()[:16]
        return self._fingerprints[key]

    def leakage(
        self,
        name: str,
        size: int,
        mode: LeakageMode = "report",
        threshold: int = DEFAULT_THRESHOLD,
        min_correlation: float = DEFAULT_MIN_CORRELATION,
        download: bool = True,
        cache_folder: Path | None = None,
    ) -> DuplicateReport | None:
        """The leakage guard on ``get(name, size)``, computed once per process (see
        :func:`ssl_hpc.data.duplicates.check_leakage`), and with ``cache_folder`` once for every process
        that uses that folder (:mod:`ssl_hpc.data.duplicates.cache`): ``None`` when ``mode`` is ``off``; raises
        :class:`~ssl_hpc.data.duplicates.LeakageError` in ``error`` mode when there are duplicates.
        Call it before building the model, so a leaking dataset stops the run before training."""
        if mode == "off":
            return None
        if mode not in ("report", "error"):
            raise ValueError(f"unknown duplicates mode {mode!r}; accepted: report, error, off")
        key = (name, size, threshold, min_correlation)
        if key not in self._reports:
            dataset = self.get(name, size, download)
            if cache_folder is None:
                self._reports[key] = duplicate_report(dataset, threshold, min_correlation)
            else:
                self._reports[key] = cached_duplicate_report(dataset, threshold, min_correlation, cache_folder)
        report = self._reports[key]
        if mode == "error" and not report.clean:
            raise LeakageError(report)
        return report

    def files(self, name: str) -> dict[str, list[str]] | None:
        """For an image folder: split -> the file of each example (to name duplicate pairs); else ``None``."""
        spec = self.datasets.get(name)
        if spec is None:
            return None
        return index_image_folder(spec, self.data_root, self.cache_dir).files


def ensure_dataset(
    name: str,
    size: int,
    data_root: Path,
    datasets: Mapping[str, ImageFolderSpec] | None = None,
    download: bool = True,
    cache_dir: Path | None = None,
) -> None:
    """Checks a dataset is there before anything is submitted (on the login node).

    MedMNIST, MNIST: the files are present (downloaded if allowed). Image folder: the layout, classes and
    masks are valid and the split is made and saved -- without decoding any image. Raises
    :class:`~ssl_hpc.data.medmnist.DatasetMissingError` or
    :class:`~ssl_hpc.data.image_folder.DatasetFolderError`, naming the file or folder.
    """
    spec = (datasets or {}).get(name)
    if spec is None and name == MNIST_NAME:
        ensure_mnist_files(data_root, download=download)
    elif spec is None:
        ensure_medmnist_file(name, size, data_root, download=download)
    else:
        index_image_folder(spec, data_root, cache_dir)
