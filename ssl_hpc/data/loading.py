"""Which loader a dataset name goes to, and a per-process cache so a sweep's runs share loads."""

from __future__ import annotations

from pathlib import Path

from ssl_hpc.data.medmnist import load_medmnist
from ssl_hpc.data.splits import LabeledDataset


class DatasetCache:
    """Each (dataset, size) is read from disk once per process, however many runs use it."""

    def __init__(self, data_root: Path):
        self.data_root = data_root
        self._loaded: dict[tuple[str, int], LabeledDataset] = {}

    def get(self, name: str, size: int, download: bool = True) -> LabeledDataset:
        key = (name, size)
        if key not in self._loaded:
            self._loaded[key] = load_medmnist(name, size, self.data_root, download=download)
        return self._loaded[key]
