"""Checkpoints that survive a kill at any instant, and load without running pickled code.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one: a reader sees either the previous complete file or the new complete file, never half
of one. Loading uses ``weights_only=True``, so a checkpoint cannot execute code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def current_umask() -> int:
    """The process's umask (reading it means setting it: put straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(obj: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # as an ordinary file would be (mkstemp makes it 0600)
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(Path(path), map_location=map_location, weights_only=True)
