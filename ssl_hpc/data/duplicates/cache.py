"""The leakage guard's report, computed once per dataset and kept beside a sweep's outputs.

Every fine-tune job of a sweep checks the same splits: on Slurm each job is its own process, so the
in-process cache of :class:`ssl_hpc.data.loading.DatasetCache` does not help, and twenty jobs would scan
twenty times. The report is kept as ``<folder>/<fingerprint>.json``; the fingerprint covers the examples
of all three splits and their order, the guard's settings and :data:`CACHE_VERSION`, so a changed dataset,
threshold or algorithm never reads a stale report. Jobs starting at once on a shared filesystem take a
file lock: one scans and writes the file atomically, the others wait and read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ssl_hpc.data.duplicates.leakage import MAX_LISTED_PAIRS, SPLITS, duplicate_report
from ssl_hpc.data.duplicates.report import DuplicateReport
from ssl_hpc.data.splits import LabeledDataset
from ssl_hpc.files import atomic_write_text, exclusive_lock

log = logging.getLogger(__name__)

# Bump whenever duplicate_report could find other pairs for the same images (hashing, search, defaults)
# or the report's JSON changes: older files are then simply not found.
CACHE_VERSION = 1


def report_fingerprint(dataset: LabeledDataset, threshold: int, min_correlation: float) -> str:
    """What the report depends on: the splits' examples (images, labels, order) and the guard's settings."""
    identity = {
        "version": CACHE_VERSION,
        "dataset": dataset.name,
        "splits": {name: getattr(dataset, name).digest() for name in SPLITS},
        "threshold": threshold,
        "min_correlation": min_correlation,
        "max_pairs": MAX_LISTED_PAIRS,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _read(path: Path) -> DuplicateReport | None:
    """The cached report, or ``None`` when there is none or it cannot be read (it is then recomputed)."""
    try:
        return DuplicateReport.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("leakage cache %s is unreadable (%s); scanning again", path, error)
        return None


def cached_duplicate_report(
    dataset: LabeledDataset, threshold: int, min_correlation: float, folder: Path
) -> DuplicateReport:
    """:func:`~ssl_hpc.data.duplicates.leakage.duplicate_report` of ``dataset``, read from ``folder`` when a
    job already computed it, else computed (by one job at a time) and written there."""
    fingerprint = report_fingerprint(dataset, threshold, min_correlation)
    path = Path(folder) / f"{fingerprint}.json"
    report = _read(path)
    if report is not None:
        return report
    with exclusive_lock(path.with_suffix(".lock")):
        report = _read(path)  # another job may have written it while this one waited
        if report is None:
            report = duplicate_report(dataset, threshold, min_correlation)
            atomic_write_text(path, report.to_json())
        else:
            log.info("%s: leakage report read from %s", dataset.name, path)
    return report
