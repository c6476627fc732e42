"""Indexing: which file is which example -- per split, the image files, their labels and masks.

The layout is told apart automatically (``layout: auto``: ``split_folders`` when the root has the
train and test split folders, else ``class_folders``) or named. Class folders are taken in sorted
order unless ``classes`` lists them (then only those, in that order). Nothing is decoded here: the
index is what the saved split (:mod:`ssl_hpc.data.image_folder.split`), the mask pairing
(:mod:`ssl_hpc.data.image_folder.masks`) and the cache key (:meth:`FolderIndex.digest`) are
computed from.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ssl_hpc.config.datasets import ImageFolderSpec
from ssl_hpc.data.image_folder.cache import FORMAT
from ssl_hpc.data.image_folder.masks import _pair_masks
from ssl_hpc.data.image_folder.scan import SPLITS, DatasetFolderError, FileEntry, _image_files, _visible_dirs
from ssl_hpc.data.image_folder.split import _load_or_make_split, _split_parameters


@dataclass(frozen=True)
class FolderIndex:
    """Which file is which example: per split, image files (relative to ``root``), labels, masks."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    files: dict[str, list[str]]  # split -> relative posix paths, in example order
    labels: dict[str, np.ndarray]  # split -> int64 labels
    entries: dict[str, list[FileEntry]]  # split -> image file stats
    masks: dict[str, list[FileEntry]] | None  # split -> mask file stats, paired with ``entries``
    split_file: Path | None  # the saved split, when the split is not given by folders

    def digest(self, spec: ImageFolderSpec, size: int) -> str:
        """What the decoded tensors depend on: every file's path, label, size and mtime, and the settings."""
        hasher = hashlib.sha256()
        settings = {
            "format": FORMAT,
            "size": size,
            "channels": spec.channels,
            "resize": spec.resize,
            "classes": list(self.class_names),
        }
        hasher.update(json.dumps(settings, sort_keys=True).encode())
        for split in SPLITS:
            hasher.update(f"\0{split}\0".encode())
            masks = self.masks[split] if self.masks is not None else [None] * len(self.files[split])
            for relative, label, entry, mask in zip(self.files[split], self.labels[split], self.entries[split], masks):
                hasher.update(f"{relative}\t{int(label)}\t{entry.size}\t{entry.mtime_ns}\n".encode())
                if mask is not None:
                    where = mask.path.relative_to(self.root) if mask.path.is_relative_to(self.root) else mask.path
                    hasher.update(f"m\t{where}\t{mask.size}\t{mask.mtime_ns}\n".encode())
        return hasher.hexdigest()[:16]


def _class_images(class_dir: Path, spec: ImageFolderSpec) -> list[FileEntry]:
    """The image files of one class folder; errors name the folder."""
    if not class_dir.is_dir():
        raise DatasetFolderError(f"class folder {class_dir} does not exist")
    folder = class_dir / spec.images_subdir if spec.images_subdir else class_dir
    if not folder.is_dir():
        raise DatasetFolderError(f"class folder {class_dir} has no {spec.images_subdir!r} subfolder (images_subdir)")
    files = _image_files(folder, spec.extensions)
    if not files:
        hint = ""
        subfolders = [d for d in _visible_dirs(folder) if d != spec.masks_subdir]
        if subfolders and not spec.images_subdir:
            hint = f"; it has subfolders {subfolders}: set images_subdir (e.g. images_subdir: {subfolders[0]})"
        raise DatasetFolderError(f"empty class folder {folder}: no image files ({', '.join(spec.extensions)}){hint}")
    return files


def _detect_layout(root: Path, spec: ImageFolderSpec) -> str:
    if spec.layout != "auto":
        return spec.layout
    train, _, test = spec.split_folders
    return "split_folders" if (root / train).is_dir() and (root / test).is_dir() else "class_folders"


def _class_names(folder: Path, spec: ImageFolderSpec) -> tuple[str, ...]:
    if spec.classes is not None:
        return spec.classes
    names = tuple(_visible_dirs(folder))
    if not names:
        raise DatasetFolderError(f"no class folders in {folder}: expected one folder per class (e.g. {folder}/NORMAL/)")
    if len(names) < 2:
        raise DatasetFolderError(f"only one class folder ({names[0]!r}) in {folder}; a classifier needs at least 2")
    return names


def index_image_folder(
    spec: ImageFolderSpec, data_root: Path | None = None, cache_dir: Path | None = None
) -> FolderIndex:
    """Lists the dataset's files, split and paired with masks, without decoding anything.

    Makes (once) and saves the split file when the layout has no split folders, or when
    ``val_from_train`` is set. Raises :class:`DatasetFolderError` naming the folder or file.
    """
    root = spec.resolve(spec.root, data_root)
    if not root.is_dir():
        raise DatasetFolderError(
            f"dataset folder {root} does not exist (root: {spec.root!r}; a relative root is "
            "resolved against the data root: the sweep's data_root, else MEDMNIST_ROOT)"
        )
    layout = _detect_layout(root, spec)
    if layout == "class_folders" and spec.val_from_train is not None:
        raise DatasetFolderError(
            f"{root} has no {spec.split_folders[0]}/ and {spec.split_folders[2]}/ folders, so "
            "val_from_train does not apply: the split comes from split_fractions"
        )
    if layout == "split_folders":
        pools, class_names = _split_folder_pools(root, spec)
    else:
        class_names = _class_names(root, spec)
        pools = {"all": {name: _class_images(root / name, spec) for name in class_names}}
    by_path = {entry.path: entry for pool in pools.values() for files in pool.values() for entry in files}
    label_of = {name: index for index, name in enumerate(class_names)}

    split_file = None
    if layout == "split_folders" and spec.val_from_train is None:
        assigned = {split: [e.path for name in class_names for e in pools[split][name]] for split in SPLITS}
    else:
        pool = pools["train"] if layout == "split_folders" else pools["all"]
        parameters = _split_parameters(spec, layout, class_names)
        split_file, relative = _load_or_make_split(root, pool, parameters, spec, data_root, cache_dir)
        assigned = {split: [root / r for r in relative[split]] for split in relative}
        if layout == "split_folders":
            assigned["test"] = [e.path for name in class_names for e in pools["test"][name]]

    files, labels, entries = {}, {}, {}
    for split in SPLITS:
        paths = assigned[split]
        files[split] = [p.relative_to(root).as_posix() for p in paths]
        entries[split] = [by_path[p] for p in paths]
        labels[split] = np.array([label_of[_class_of(r, layout)] for r in files[split]], dtype=np.int64)
    masks = _pair_masks(root, spec, pools, entries, data_root) if spec.has_masks else None
    return FolderIndex(root, layout, class_names, files, labels, entries, masks, split_file)


def _split_folder_pools(root: Path, spec: ImageFolderSpec):
    train, val, test = spec.split_folders
    class_names = _class_names(root / train, spec)
    present = {split: folder for split, folder in zip(SPLITS, spec.split_folders) if (root / folder).is_dir()}
    if "val" not in present and spec.val_from_train is None:
        raise DatasetFolderError(
            f"{root} has {train}/ and {test}/ but no {val}/ folder: add it, or set "
            "val_from_train (e.g. 0.1) to carve a validation split out of the train images"
        )
    pools: dict[str, dict[str, list[FileEntry]]] = {}
    for split, folder in present.items():
        missing = [name for name in class_names if not (root / folder / name).is_dir()]
        if missing:
            raise DatasetFolderError(
                f"split folder {root / folder} has no folder for class(es) {missing} (classes: {list(class_names)})"
            )
        if spec.classes is None:
            extra = [name for name in _visible_dirs(root / folder) if name not in class_names]
            if extra:
                raise DatasetFolderError(
                    f"split folder {root / folder} has class folder(s) {extra} that {root / train} does not have"
                )
        pools[split] = {name: _class_images(root / folder / name, spec) for name in class_names}
    if spec.val_from_train is not None and "val" in pools:
        # The val folder's images join the train pool; the validation split is carved from the union.
        val_pool = pools.pop("val")
        pools["train"] = {name: pools["train"][name] + val_pool[name] for name in class_names}
    return pools, class_names


def _class_of(relative: str, layout: str) -> str:
    parts = PurePosixPath(relative).parts
    return parts[1] if layout == "split_folders" else parts[0]


def image_folder_files(
    spec: ImageFolderSpec, data_root: Path | None = None, cache_dir: Path | None = None
) -> dict[str, list[str]]:
    """Split -> the file (relative to the root) of each example, in the loaded order (to name the
    files of :meth:`ssl_hpc.data.duplicates.DuplicateReport.pairs_table`)."""
    return index_image_folder(spec, data_root, cache_dir).files
