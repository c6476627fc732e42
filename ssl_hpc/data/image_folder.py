"""Image-folder datasets (chest X-rays kept as files, not MedMNIST arrays), as :class:`LabeledDataset`.

Two layouts, told apart automatically (``layout: auto``) or named:

``split_folders``
    ``root/{train,val,test}/<class>/*.png`` -- the Kaggle pneumonia set (``chest_xray/``). Its val
    folder holds 16 images; ``val_from_train: 0.1`` instead carves a stratified, seeded val split
    out of the train images (the val folder's images, if any, join the train pool first).
``class_folders``
    ``root/<class>/*.png`` with no split folders -- the COVID-19 Radiography Database, whose class
    folders hold ``images/`` and ``masks/`` (``images_subdir: images``, ``masks_subdir: masks``).
    A stratified, seeded train/val/test split (``split_fractions``, ``split_seed``) is made once and
    saved next to the data (``root/.ssl_hpc_split_seed<seed>_<digest>.json``, the digest naming the
    split parameters), so it never changes: later loads read it, and fail, naming the file, if
    images were added to or removed from the folder since.

Class folders are taken in sorted order unless ``classes`` lists them (then only those, in that
order); hidden folders and ``__MACOSX`` are ignored, as are files without an image extension.

Masks (optional) pair with images by file name: the mask of ``<stem>.<ext>`` is
``<stem><mask_suffix>.<any image ext>`` in ``<class>/<masks_subdir>/`` or, with ``mask_root``, in
``<mask_root>/[<split>/]<class>/``. They are returned as uint8 {0, 1} ``[N, 1, H, W]`` (a pixel is in
the mask when above half the mask's maximum, so 0/1, 0/255 and JPEG-noisy masks all work).

Decoding: PIL, ``channels: 1`` (gray, "L") or ``3`` (RGB); 16-bit and float images are min-max
scaled to 8 bits per image. Resizing to ``size x size`` happens at load time:
``resize: stretch`` (the default) resizes the whole image, changing the aspect ratio if needed --
what Keras' ``flow_from_directory`` and ``torchvision.transforms.Resize((s, s))`` do, which the
reproduced reports used, and chest X-rays are near-square so nothing of the lung field is lost;
``resize: center_crop`` resizes the shorter side then crops the centre. Images use antialiased
bilinear resampling (large JPEGs are first decoded at a reduced scale, at least twice the target
size); masks use nearest-neighbour on the same geometry.

Cache: the decoded, resized uint8 tensors are saved (atomically, loaded with ``weights_only=True``)
in the cache folder (``<data root>/.ssl_hpc_cache/``, else ``~/.cache/ssl_hpc/`` when the data root
is read-only), keyed by a hash of every file's relative path, label, size and mtime, the split,
the output size, channels, resize mode and mask settings: a changed folder gets a new cache, the
same folder loads in a fraction of a second.

A relative ``root`` (and ``mask_root``) is resolved against the data root (the sweep's
``data_root``, else ``MEDMNIST_ROOT``, else ``~/.medmnist``): the same sweep YAML then runs on a
laptop and on the cluster, where only the data root differs, and relative paths never depend on
the folder a job happens to start in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_hpc.config.datasets import ImageFolderSpec, default_data_root
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.files import load_checkpoint, save_atomic, write_once

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_FILE_PREFIX = ".ssl_hpc_split_"
CACHE_FOLDER = ".ssl_hpc_cache"
FORMAT = 1  # bump when decoding changes, so old caches are not reused


class DatasetFolderError(ValueError):
    """An image folder that cannot be loaded; the message names the folder or file."""


# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True)
class FileEntry:
    path: Path
    size: int
    mtime_ns: int


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


def _visible_dirs(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith((".", "__")))


def _image_files(folder: Path, extensions: tuple[str, ...]) -> list[FileEntry]:
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if os.path.splitext(entry.name)[1].lower() in extensions:
                stat = entry.stat()
                found.append(FileEntry(Path(entry.path), stat.st_size, stat.st_mtime_ns))
    return sorted(found, key=lambda e: e.path.name)


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


# --------------------------------------------------------------------------- the saved split


def _split_parameters(spec: ImageFolderSpec, layout: str, class_names: tuple[str, ...]) -> dict:
    if layout == "split_folders":
        fractions = {"val_from_train": spec.val_from_train}
    else:
        fractions = {"split_fractions": list(spec.split_fractions)}
    return {
        "layout": layout,
        "seed": spec.split_seed,
        **fractions,
        "classes": list(class_names),
        "images_subdir": spec.images_subdir,
        "split_folders": list(spec.split_folders),
        "extensions": list(spec.extensions),
    }


def split_file_name(parameters: dict) -> str:
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:10]
    return f"{SPLIT_FILE_PREFIX}seed{parameters['seed']}_{digest}.json"


def stratified_split(pool: dict[str, list[str]], parameters: dict) -> dict[str, list[str]]:
    """Per class: a seeded permutation of its sorted files, cut by the fractions (rounded to the
    nearest example, so each split is within one example of its target share of every class).

    Each class has its own generator (seeded by the seed and the class name), so declaring a
    subset of the classes leaves the others' splits unchanged.
    """
    if parameters["layout"] == "split_folders":
        shares = {"val": parameters["val_from_train"], "test": 0.0}
    else:
        _, val_share, test_share = parameters["split_fractions"]
        shares = {"val": val_share, "test": test_share}
    result: dict[str, list[str]] = {split: [] for split in SPLITS}
    for name in sorted(pool):
        members = sorted(pool[name])
        rng = np.random.default_rng([parameters["seed"], zlib.crc32(name.encode())])
        ranked = [members[k] for k in rng.permutation(len(members))]
        n_test = int(np.floor(len(members) * shares["test"] + 0.5))
        n_val = int(np.floor(len(members) * shares["val"] + 0.5))
        if len(members) - n_test - n_val < 1:
            raise DatasetFolderError(
                f"class {name!r} has only {len(members)} images, too few to split into train/val/test with {shares}"
            )
        result["test"] += ranked[:n_test]
        result["val"] += ranked[n_test : n_test + n_val]
        result["train"] += ranked[n_test + n_val :]
    if parameters["layout"] == "split_folders":
        del result["test"]
    return {split: sorted(files) for split, files in result.items()}


def _load_or_make_split(root, pool, parameters, spec, data_root, cache_dir):
    """The saved split for these parameters (made and saved once if absent), checked against the folder."""
    relative_pool = {name: [e.path.relative_to(root).as_posix() for e in files] for name, files in pool.items()}
    name = split_file_name(parameters)
    fallback = _fallback_split_dir(root, spec, data_root, cache_dir) / name
    for candidate in (root / name, fallback):
        if candidate.is_file():
            splits = _read_split(candidate, parameters)
            _check_split_matches(candidate, splits, relative_pool)
            return candidate, splits
    splits = stratified_split(relative_pool, parameters)
    payload = {
        "format": 1,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": parameters,
        "counts": {s: len(f) for s, f in splits.items()},
        "splits": splits,
    }
    text = json.dumps(payload, indent=1)
    path = root / name
    if _writable(root):
        written = write_once(path, text)
    else:
        path = fallback
        written = write_once(path, text)
        log.warning(
            "dataset folder %s is read-only: the split is saved in %s instead (copy it next to the data to "
            "share it with other machines)",
            root,
            path,
        )
    if not written:  # another process saved it first: use theirs
        splits = _read_split(path, parameters)
        _check_split_matches(path, splits, relative_pool)
    else:
        log.info(
            "%s: made the %s split (%s) and saved it in %s",
            root,
            parameters["layout"],
            ", ".join(f"{s} {len(f)}" for s, f in splits.items()),
            path,
        )
    return path, splits


def _read_split(path: Path, parameters: dict) -> dict[str, list[str]]:
    try:
        payload = json.loads(path.read_text())
        splits = payload["splits"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetFolderError(
            f"split file {path} is unreadable ({error}); delete it to make a new split (this changes the test set)"
        ) from None
    if payload.get("parameters") != parameters:
        raise DatasetFolderError(
            f"split file {path} was made with parameters {payload.get('parameters')}, not "
            f"{parameters}; delete it to make a new split (this changes the test set)"
        )
    return splits


def _check_split_matches(path: Path, splits: dict[str, list[str]], pool: dict[str, list[str]]) -> None:
    listed = {f for files in splits.values() for f in files}
    present = {f for files in pool.values() for f in files}
    gone, added = sorted(listed - present), sorted(present - listed)
    if gone or added:
        problems = []
        if gone:
            problems.append(f"{len(gone)} image(s) it lists are gone (e.g. {gone[:3]})")
        if added:
            problems.append(f"{len(added)} image(s) were added since (e.g. {added[:3]})")
        raise DatasetFolderError(
            f"the folder no longer matches its saved split {path}: {'; '.join(problems)}. The split is made once so "
            "that the test set never changes: restore the folder, or delete the split file to make a new split "
            "(this changes the test set, so results before and after are not comparable)"
        )


def _fallback_split_dir(root: Path, spec: ImageFolderSpec, data_root: Path | None, cache_dir: Path | None) -> Path:
    base = cache_dir if cache_dir is not None else default_cache_dir(data_root)
    return base / "splits" / hashlib.sha256(str(root).encode()).hexdigest()[:16]


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ssl_hpc_probe_"):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- masks


def _pair_masks(root, spec, pools, entries, data_root) -> dict[str, list[FileEntry]]:
    """For every image its mask; errors name a mask without its image, or an image without its mask."""
    mask_root = spec.resolve(spec.mask_root, data_root) if spec.mask_root is not None else None
    by_image: dict[Path, FileEntry] = {}
    image_dirs: dict[Path, list[FileEntry]] = {}  # every folder that holds images -> its images
    for pool in pools.values():
        for files in pool.values():
            for entry in files:
                image_dirs.setdefault(entry.path.parent, []).append(entry)
    for folder, images in image_dirs.items():
        class_dir = folder.parent if spec.images_subdir else folder
        if mask_root is not None:
            mask_dir = mask_root / class_dir.relative_to(root)
        else:
            mask_dir = class_dir / spec.masks_subdir
        if not mask_dir.is_dir():
            raise DatasetFolderError(f"mask folder {mask_dir} does not exist (for the images in {folder})")
        stems: dict[str, FileEntry] = {}
        for image in images:
            stem = image.path.stem
            if stem in stems:
                raise DatasetFolderError(
                    f"images {stems[stem].path.name} and {image.path.name} in {folder} share "
                    "a name, so they cannot be paired with masks by file name"
                )
            stems[stem] = image
        masks = {}
        for mask in _image_files(mask_dir, spec.extensions):
            stem = mask.path.stem
            if spec.mask_suffix and stem.endswith(spec.mask_suffix):
                stem = stem[: -len(spec.mask_suffix)]
            elif spec.mask_suffix:
                stem = None
            if stem is None or stem not in stems:
                expected = f"{stem}.*" if stem is not None else f"(a name ending in {spec.mask_suffix!r})"
                raise DatasetFolderError(f"mask {mask.path} has no image: expected {expected} in {folder}")
            if stem in masks:
                raise DatasetFolderError(
                    f"image {stems[stem].path} has two masks: {masks[stem].path.name} and "
                    f"{mask.path.name} in {mask_dir}"
                )
            masks[stem] = mask
        for stem, image in stems.items():
            if stem not in masks:
                raise DatasetFolderError(
                    f"image {image.path} has no mask: expected {stem}{spec.mask_suffix}.* in {mask_dir}"
                )
            by_image[image.path] = masks[stem]
    return {split: [by_image[e.path] for e in entries[split]] for split in SPLITS}


# --------------------------------------------------------------------------- decoding


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        image = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    return image if image.mode == mode else image.convert(mode)


def _fit(image: Image.Image, size: int, resize: str, resample: Image.Resampling) -> Image.Image:
    if resize == "center_crop":
        return ImageOps.fit(image, (size, size), method=resample, centering=(0.5, 0.5))
    return image.resize((size, size), resample)


def _decode(path: Path, size: int, channels: int, resize: str, mask: bool = False) -> np.ndarray:
    """One file as uint8 ``[C, size, size]`` (a mask: ``[1, size, size]`` in {0, 1})."""
    mode = "L" if mask or channels == 1 else "RGB"
    try:
        with Image.open(path) as opened:
            if not mask and opened.format == "JPEG":
                opened.draft(mode, (2 * size, 2 * size))  # decode big JPEGs at a reduced scale
            image = ImageOps.exif_transpose(opened)
            image = _to_mode(image, mode)
            if mask:
                high = image.getextrema()[1]
                image = _fit(image, size, resize, Image.Resampling.NEAREST)
                values = np.asarray(image) > high / 2 if high > 0 else np.zeros((size, size), dtype=bool)
                return values.astype(np.uint8)[None]
            values = np.asarray(_fit(image, size, resize, Image.Resampling.BILINEAR), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        what = "mask" if mask else "image"
        raise DatasetFolderError(f"unreadable {what} {path}: {error}") from None
    return values[None] if values.ndim == 2 else values.transpose(2, 0, 1)


def _decode_all(paths: list[Path], size: int, channels: int, resize: str, mask: bool, workers: int) -> torch.Tensor:
    out_channels = 1 if mask else channels
    out = np.empty((len(paths), out_channels, size, size), dtype=np.uint8)

    def work(index: int) -> None:
        out[index] = _decode(paths[index], size, channels, resize, mask)

    if workers > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, range(len(paths))))  # PIL releases the GIL while decoding and resizing
    else:
        for index in range(len(paths)):
            work(index)
    return torch.from_numpy(out)


# --------------------------------------------------------------------------- loading


def default_cache_dir(data_root: Path | None = None) -> Path:
    """``<data root>/.ssl_hpc_cache`` when writable, else ``~/.cache/ssl_hpc``."""
    if data_root is None:
        data_root = default_data_root()
    preferred = Path(data_root) / CACHE_FOLDER
    if _writable(preferred):
        return preferred
    fallback = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ssl_hpc"
    log.info("data root %s is not writable; caching decoded image folders in %s", data_root, fallback)
    return fallback


def _cache_path(cache_dir: Path, name: str, size: int, digest: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cache_dir / f"{safe}-{size}px-{digest}.pt"


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


def _read_cache(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        payload = load_checkpoint(path)
        if payload.get("format") != FORMAT:
            return None
        return payload
    except Exception as error:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring the unreadable cache %s (%s); decoding again", path, error)
        return None


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


def image_folder_files(
    spec: ImageFolderSpec, data_root: Path | None = None, cache_dir: Path | None = None
) -> dict[str, list[str]]:
    """Split -> the file (relative to the root) of each example, in the loaded order (to name the
    files of :meth:`ssl_hpc.data.duplicates.DuplicateReport.pairs_table`)."""
    return index_image_folder(spec, data_root, cache_dir).files
