"""Files that survive a kill at any instant and that colleagues can read: the one home for atomic
writes, file locks and permissions.

Everything a run or a sweep writes to a shared filesystem goes through here. A write goes to a
temporary file in the same folder, is flushed to disk, then renamed over the target: a reader (another
node, a requeued job) sees the previous complete file or the new complete file, never half of one.
Temporary files are created 0600 by :mod:`tempfile`; they get the permissions an ordinary file would
get under the process's umask, so a group-shared project stays readable by the group.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from filelock import FileLock, Timeout


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ordinary_file_mode() -> int:
    return 0o666 & ~current_umask()


def ordinary_folder_mode() -> int:
    return 0o777 & ~current_umask()


def _write_temporary(path: Path, write: Callable[[IO], object], binary: bool) -> Path:
    """Writes a flushed, fsynced temporary file beside ``path`` and returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, ordinary_file_mode())
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def atomic_write(path: str | Path, write: Callable[[IO], object], binary: bool = True) -> Path:
    """Replaces ``path`` atomically with what ``write(file)`` writes; the old file survives any failure."""
    path = Path(path)
    temporary = _write_temporary(path, write, binary)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text), binary=False)


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Saves ``obj`` with ``torch.save``, atomically: a checkpoint that survives a kill at any instant."""
    import torch  # here, not at the top: the launcher side of the package needs no torch

    return atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """Loads what :func:`save_atomic` saved, with ``weights_only=True``: a checkpoint cannot run code."""
    import torch

    return torch.load(Path(path), map_location=map_location, weights_only=True)


def write_once(path: str | Path, text: str) -> bool:
    """Writes ``path`` atomically unless it exists; returns whether this call created it. Never
    overwrites: of two processes racing to create the same file, exactly one wins."""
    path = Path(path)
    temporary = _write_temporary(path, lambda file: file.write(text), binary=False)
    try:
        try:
            os.link(temporary, path)  # atomic, and fails if the file exists
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            if path.exists():
                return False
            os.replace(temporary, path)
        return True
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path: str | Path, timeout: float = -1) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if missing) for the ``with`` block; waits for it
    (``timeout`` seconds at most, -1: forever, then :class:`filelock.Timeout`). The kernel releases
    it if the process dies, so a killed job never leaves a stale lock behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path, timeout=timeout, mode=ordinary_file_mode()):
        yield


# A process that only looks (``is_locked``) holds a lock for a moment; one that wants to work waits this
# long before it concludes that somebody else is working.
LOOK_GRACE_S = 2.0


def try_lock(path: str | Path, wait: float = LOOK_GRACE_S) -> FileLock | None:
    """An exclusive lock on ``path`` if it can be had within ``wait`` seconds, else ``None``; the caller
    releases it (``.release()``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, mode=ordinary_file_mode())
    try:
        lock.acquire(timeout=wait)
    except Timeout:
        return None
    return lock


def is_locked(path: str | Path) -> bool:
    """Whether a live process holds the lock on ``path`` (a dead one's lock is gone with it)."""
    if not Path(path).is_file():
        return False
    lock = FileLock(path, mode=ordinary_file_mode())
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False
