"""The results folder ``results/<sweep>/``: replaced as a whole by every aggregation, without ever
losing a file a user put there.

The step writes into a staging folder beside it, lists what it wrote in a manifest
(:data:`MANIFEST`), then swaps the staging folder in (:func:`replace_folder`). A non-empty folder
without a manifest was not written by this step and is refused untouched
(:func:`refuse_foreign_folder`); files a user added to a folder the step wrote are carried over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from ssl_hpc.aggregate.errors import AggregationError

log = logging.getLogger("ssl_hpc.aggregate")

MANIFEST = ".aggregate-manifest.json"


def _files_below(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() or path.is_symlink())


def write_manifest(folder: Path) -> list[str]:
    """Lists what the aggregation wrote, so a re-run replaces exactly that and nothing a user added."""
    written = _files_below(folder)
    (folder / MANIFEST).write_text(json.dumps(written, indent=1))
    return written


def _manifest(folder: Path) -> set[str] | None:
    try:
        return set(json.loads((folder / MANIFEST).read_text())) | {MANIFEST}
    except (OSError, ValueError):
        return None


def refuse_foreign_folder(final: Path) -> None:
    """``results/<sweep>/`` is replaced on every run: refuse a non-empty folder this step did not write."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise AggregationError(
            f"{final} is not a folder the aggregation wrote (a link or a file); move it away or set results_dir"
        )
    if final.is_dir() and any(final.iterdir()) and _manifest(final) is None:
        raise AggregationError(
            f"{final} holds files the aggregation did not write (no {MANIFEST}); move them "
            "away or set results_dir to another folder: nothing there is overwritten"
        )


def replace_folder(staging: Path, final: Path) -> None:
    """Swaps the freshly written folder in for the previous outputs, then carries over what a user added
    to the previous folder (files not in its manifest); one whose name is now an output is kept as
    ``.<sweep>.kept-<time>/<name>`` and said in the log. The previous folder is removed only once all of
    that has moved, so an interruption at any point leaves a user's files on disk."""
    if not final.exists():
        staging.rename(final)
        return
    ours = _manifest(final) or set()
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    final.rename(old)
    staging.rename(final)
    produced = set(_files_below(final))
    kept_folder = final.parent / f".{final.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}"
    for name in _files_below(old):
        if name in ours:
            continue
        destination = (kept_folder if name in produced else final) / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        (old / name).rename(destination)
        if name in produced:
            log.warning(
                "%s: %s was not written by the aggregation and its name is now an output; kept as %s",
                final,
                name,
                destination,
            )
    shutil.rmtree(old, ignore_errors=True)
