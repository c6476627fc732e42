"""The saved split: a stratified, seeded train/val/test split, made once and kept next to the data.

It is needed where the folders do not give the split: the ``class_folders`` layout
(``split_fractions``, ``split_seed``), and ``split_folders`` with ``val_from_train`` (a val split
carved out of the train images; the val folder's images, if any, join the train pool first). The
split is made once and saved as ``root/.ssl_hpc_split_seed<seed>_<digest>.json``, the digest
naming the split parameters, so it never changes and neither does the test set: later loads read
it, and fail, naming the file, if images were added to or removed from the folder since. When the
data folder is read-only the split is saved under the cache folder (``<cache>/splits/``) instead.
Two processes making the same split at once agree: the first file written wins
(:func:`ssl_hpc.files.write_once`), the other process reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ssl_hpc.config.datasets import ImageFolderSpec
from ssl_hpc.data.image_folder.cache import _writable, default_cache_dir
from ssl_hpc.data.image_folder.scan import SPLITS, DatasetFolderError
from ssl_hpc.files import write_once

log = logging.getLogger(__name__)

SPLIT_FILE_PREFIX = ".ssl_hpc_split_"


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
