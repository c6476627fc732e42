"""The leakage guard, run before training: near-duplicates across a dataset's splits, reported or refused.

:func:`check_leakage` is what a run calls (``data.duplicates: report``, ``error`` or ``off``);
:func:`duplicate_report` compares every two splits; :func:`duplicates_between` compares an image
source outside the splits (e.g. ``pretrain.extra_unlabeled``) with a split.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import numpy as np
import torch

from ssl_hpc.config.stages import DEFAULT_DUPLICATE_MIN_CORRELATION, DEFAULT_DUPLICATE_THRESHOLD
from ssl_hpc.data.duplicates.hashing import fingerprints
from ssl_hpc.data.duplicates.report import DuplicatePair, DuplicateReport, SplitPairCount
from ssl_hpc.data.duplicates.search import _matching_pairs
from ssl_hpc.data.splits import LabeledDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_PAIRS: tuple[tuple[str, str], ...] = (("train", "val"), ("train", "test"), ("val", "test"))
# pHash bits, calibrated on PneumoniaMNIST at 28 px (see the docstring of ssl_hpc.data.duplicates); the
# correlation of the 16 x 16 thumbnails that confirms a hash match. The sweep's data: section defaults to them.
DEFAULT_THRESHOLD = DEFAULT_DUPLICATE_THRESHOLD
DEFAULT_MIN_CORRELATION = DEFAULT_DUPLICATE_MIN_CORRELATION
MAX_LISTED_PAIRS = 1000
LeakageMode = Literal["report", "error", "off"]


class LeakageError(RuntimeError):
    """Near-duplicate images across splits, with ``data.duplicates: error``."""

    def __init__(self, report: DuplicateReport):
        self.report = report
        super().__init__(
            f"{report.dataset}: near-duplicate images across splits (pHash Hamming distance <= "
            f"{report.threshold}): {report.summary()}. The test metrics would be inflated. Remove the "
            "duplicates from the data (see the pairs listed by ssl_hpc.data.duplicates.check_leakage), or "
            "set data.duplicates: report to train anyway and keep the counts in MLflow."
        )


def duplicates_between(
    first: torch.Tensor,
    second: torch.Tensor,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    mirrored: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Near-duplicate pairs between two uint8 image tensors: ``(i, j, distance, correlation)``.

    For sources outside the dataset's splits, e.g. the extra unlabelled images of a pretraining
    run (``pretrain.extra_unlabeled``) against the target's val and test images.
    """
    a = fingerprints(first)
    b = fingerprints(second, mirror=mirrored)
    pairs, _ = _matching_pairs(a, [b, b.mirrored()] if mirrored else [b], threshold, min_correlation)
    return pairs


def duplicate_report(
    dataset: LabeledDataset,
    threshold: int = DEFAULT_THRESHOLD,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    mirrored: bool = True,
    max_pairs: int = MAX_LISTED_PAIRS,
) -> DuplicateReport:
    """Near-duplicates between every two splits of ``dataset`` (pairs inside one split are not counted).

    A pair is a near-duplicate when its pHashes differ in at most ``threshold`` bits and its 16 x 16
    thumbnails correlate at least ``min_correlation`` (``min_correlation=-1`` keeps every hash match).
    With ``mirrored``, a left-right flipped copy (a common augmentation) counts too.
    """
    started = time.perf_counter()
    splits = {name: getattr(dataset, name) for name in SPLITS}
    prints = {name: fingerprints(split.images, mirror=mirrored and name != "train") for name, split in splits.items()}
    flipped = {name: prints[name].mirrored() for name in ("val", "test")} if mirrored else {}
    labels = {name: split.labels.cpu().numpy() for name, split in splits.items()}
    counts: dict[tuple[str, str], SplitPairCount] = {}
    listed: list[DuplicatePair] = []
    truncated = False
    for first, second in SPLIT_PAIRS:
        variants = [prints[second]] + ([flipped[second]] if mirrored else [])
        (i, j, distance, corr), matches = _matching_pairs(prints[first], variants, threshold, min_correlation)
        counts[(first, second)] = SplitPairCount(
            pairs=len(i),
            first_images=len(np.unique(i)),
            second_images=len(np.unique(j)),
            label_conflicts=int((labels[first][i] != labels[second][j]).sum()),
            hash_matches=matches,
        )
        room = max(0, max_pairs - len(listed))
        truncated |= len(i) > room
        listed.extend(
            DuplicatePair(
                first,
                int(i[k]),
                second,
                int(j[k]),
                int(distance[k]),
                round(float(corr[k]), 4),
                int(labels[first][i[k]]),
                int(labels[second][j[k]]),
            )
            for k in range(min(room, len(i)))
        )
    report = DuplicateReport(
        dataset=dataset.name,
        threshold=threshold,
        min_correlation=min_correlation,
        counts=counts,
        pairs=tuple(listed),
        pairs_truncated=truncated,
        sizes={name: len(split) for name, split in splits.items()},
        seconds=time.perf_counter() - started,
    )
    log.info(
        "%s: near-duplicates across splits (pHash distance <= %d, correlation >= %.2f): %s [%.1f s]",
        dataset.name,
        threshold,
        min_correlation,
        report.summary(),
        report.seconds,
    )
    return report


def check_leakage(
    dataset: LabeledDataset,
    threshold: int = DEFAULT_THRESHOLD,
    mode: LeakageMode = "report",
    min_correlation: float = DEFAULT_MIN_CORRELATION,
) -> DuplicateReport | None:
    """The leakage guard, to run before training (before any model is built).

    ``off``: nothing is computed, returns ``None``. ``report``: returns the report (log
    :meth:`DuplicateReport.as_metrics` to MLflow). ``error``: raises :class:`LeakageError`,
    naming the counts, when any split pair has a near-duplicate; else returns the report.
    """
    if mode == "off":
        return None
    if mode not in ("report", "error"):
        raise ValueError(f"unknown duplicates mode {mode!r}; accepted: report, error, off")
    report = duplicate_report(dataset, threshold, min_correlation)
    if not report.clean:
        if mode == "error":
            raise LeakageError(report)
        log.warning("%s: %d near-duplicate pairs across splits: %s", dataset.name, report.total, report.summary())
    return report
