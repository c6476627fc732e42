"""What an image folder holds, listed without decoding anything: class subfolders and image files.

Hidden entries (a leading ``.``) and folders such as ``__MACOSX`` (a leading ``__``) are ignored, as
are files without one of the spec's image extensions. Each file is kept with its size and mtime:
the key of the decoded-tensor cache depends on them (:mod:`ssl_hpc.data.image_folder.cache`).

:class:`DatasetFolderError` lives here, at the bottom of the package, because every step raises
it: indexing, the saved split, the mask pairing and decoding.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")


class DatasetFolderError(ValueError):
    """An image folder that cannot be loaded; the message names the folder or file."""


@dataclass(frozen=True)
class FileEntry:
    path: Path
    size: int
    mtime_ns: int


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
