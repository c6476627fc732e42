"""The decoded-tensor cache: where decoded image folders are kept, and how a cached file is read back.

Decoding a folder of X-rays takes minutes, reading its tensors back a fraction of a second. The
decoded, resized uint8 tensors are saved (atomically, loaded with ``weights_only=True``) in the
cache folder (``<data root>/.ssl_hpc_cache/``, else ``~/.cache/ssl_hpc/`` when the data root is
read-only), keyed by a hash of every file's relative path, label, size and mtime, the split, the
output size, channels, resize mode and mask settings
(:meth:`ssl_hpc.data.image_folder.index.FolderIndex.digest`): a changed folder gets a new cache,
the same folder loads in a fraction of a second. A damaged cache file, or one of another
:data:`FORMAT`, is decoded again, never trusted.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from ssl_hpc.config.datasets import default_data_root
from ssl_hpc.files import load_checkpoint

log = logging.getLogger(__name__)

CACHE_FOLDER = ".ssl_hpc_cache"
FORMAT = 1  # bump when decoding changes, so old caches are not reused


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


def _writable(folder: Path) -> bool:
    """Whether files can be made in ``folder`` (created if missing): a probe file is made and removed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ssl_hpc_probe_"):
            return True
    except OSError:
        return False


def _cache_path(cache_dir: Path, name: str, size: int, digest: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cache_dir / f"{safe}-{size}px-{digest}.pt"


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
