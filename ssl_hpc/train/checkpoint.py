"""Checkpoints that survive a kill at any instant, and load without running pickled code.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over
the old one: a reader sees either the previous complete file or the new complete file, never half
of one. Loading uses ``weights_only=True``, so a checkpoint cannot execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ssl_hpc.files import atomic_write


def save_atomic(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    return torch.load(Path(path), map_location=map_location, weights_only=True)
