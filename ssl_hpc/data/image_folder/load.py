"""Loading: the image folder as a :class:`~ssl_hpc.data.splits.LabeledDataset`, through the decoded-tensor cache.

The first load of a folder indexes it (:mod:`ssl_hpc.data.image_folder.index`), decodes every file
(:mod:`ssl_hpc.data.image_folder.decode`, in a thread pool) and saves the tensors
(:mod:`ssl_hpc.data.image_folder.cache`); later loads of the unchanged folder read the cache.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from ssl_hpc.config.datasets import ImageFolderSpec
from ssl_hpc.data.image_folder.cache import FORMAT, _cache_path, _read_cache, default_cache_dir
from ssl_hpc.data.image_folder.decode import _decode_all
from ssl_hpc.data.image_folder.index import FolderIndex, index_image_folder
from ssl_hpc.data.image_folder.scan import SPLITS
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.files import save_atomic

log = logging.getLogger(__name__)


def load_image_folder(
    name: str,
    spec: ImageFolderSpec,
    size: int,
    cache_dir: Path | None = None,
    data_root: Path | None = None,
    workers: int | None = None,
) -> LabeledDataset:
    """The image folder as a :class:`LabeledDataset` of uint8 ``[N, C, size, size]`` tensors.

    ``class_names`` are the class folders' names (in ``spec.classes`` order if given, else sorted);
    ``masks`` (when the spec has masks) maps each split to uint8 {0, 1} ``[N, 1, size, size]``.
    The first load decodes every file and saves the tensors in ``cache_dir``; later loads of the
    unchanged folder read that file instead.
    """
    started = time.perf_counter()
    index = index_image_folder(spec, data_root, cache_dir)
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir(data_root)
    path = _cache_path(Path(cache_dir), name, size, index.digest(spec, size))
    payload = _read_cache(path)
    if payload is None:
        payload = _decode_index(index, spec, size, workers)
        try:
            save_atomic(payload, path)
        except OSError as error:
            log.warning("%s: could not cache the decoded images in %s (%s)", name, path, error)
        log.info(
            "%s: decoded %d images from %s in %.1f s (cached in %s)",
            name,
            sum(len(f) for f in index.files.values()),
            index.root,
            time.perf_counter() - started,
            path,
        )
    else:
        log.info("%s: loaded from the cache %s in %.2f s", name, path, time.perf_counter() - started)
    splits = {split: ImageSplit(payload["images"][split], payload["labels"][split]) for split in SPLITS}
    masks = payload.get("masks")
    return LabeledDataset(name=name, class_names=tuple(payload["class_names"]), masks=masks, **splits)


def _decode_index(index: FolderIndex, spec: ImageFolderSpec, size: int, workers: int | None) -> dict:
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    payload: dict = {
        "format": FORMAT,
        "class_names": list(index.class_names),
        "files": index.files,
        "images": {},
        "labels": {},
    }
    for split in SPLITS:
        paths = [entry.path for entry in index.entries[split]]
        payload["images"][split] = _decode_all(paths, size, spec.channels, spec.resize, False, workers)
        payload["labels"][split] = torch.from_numpy(index.labels[split].copy())
    if index.masks is not None:
        payload["masks"] = {
            split: _decode_all([m.path for m in index.masks[split]], size, spec.channels, spec.resize, True, workers)
            for split in SPLITS
        }
    return payload
