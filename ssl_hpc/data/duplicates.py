"""Leakage guard: near-duplicate images across the train / val / test splits.

A test image whose twin (the same scan, re-encoded, brightened or resized) sits in the training
split measures memory, not generalisation. DermaMNIST is known to have such duplicates across its
official splits (Abhishek et al., Scientific Data 2025), and the pulmonary report augmented before
splitting, which puts augmented copies of test images into training.

Each image gets a 64-bit perceptual hash (pHash: the signs, against their median, of the 8 x 8
lowest frequencies of the 2-D DCT of the 32 x 32 grayscale downsample: ``imagehash.phash``'s
construction, resampled by box-filter averaging instead of Lanczos), computed in batches on the uint8
tensors the pipeline already holds. Two images are near-duplicates when their hashes differ in at
most ``threshold`` bits *and* their 16 x 16 grayscale thumbnails correlate (Pearson) at least
``min_correlation``; a left-right mirrored copy (a common augmentation) counts too. The hash
alone is too coarse at 28 px: on the real PneumoniaMNIST, distinct chest X-rays are often 4-8 bits
apart, while a JPEG re-encoded or noisy copy can be 6-8 bits away from its original.
Calibration (PneumoniaMNIST, 28 px): copies of 300 test images (brightened +30, contrast x0.8, JPEG
q60, resized down and up, Gaussian noise sigma 5, mirrored) are all within 8 bits and correlate
>= 0.987; among the 54k cross-split pairs of distinct images within 12 bits (2.3k mirrored), none
correlates above 0.971. Hence the defaults: 8 bits, correlation 0.98.

Comparisons scale to MedMNIST sizes (100k train x 10k val/test) by multi-index hashing: with the
64 bits cut into ``threshold + 1`` chunks, two hashes within ``threshold`` bits agree exactly on at
least one chunk (pigeonhole), so only pairs sharing a chunk value are compared. When the hashes
are too clustered for that to prune, a chunked brute force (XOR + popcount on packed uint64) runs
instead; both give exactly the same pairs.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ssl_hpc.config.stages import DEFAULT_DUPLICATE_MIN_CORRELATION, DEFAULT_DUPLICATE_THRESHOLD
from ssl_hpc.data.splits import LabeledDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_PAIRS: tuple[tuple[str, str], ...] = (("train", "val"), ("train", "test"), ("val", "test"))
# pHash bits, calibrated on PneumoniaMNIST at 28 px (see the module docstring); the correlation of the 16 x 16
# thumbnails that confirms a hash match. The sweep's data: section defaults to them.
DEFAULT_THRESHOLD = DEFAULT_DUPLICATE_THRESHOLD
DEFAULT_MIN_CORRELATION = DEFAULT_DUPLICATE_MIN_CORRELATION
HASH_SIZE = 8  # 8 x 8 low frequencies -> 64 bits
DCT_SIZE = 32  # hashed from the 32 x 32 grayscale downsample
THUMB_SIZE = 16  # pairs are confirmed on the 16 x 16 grayscale thumbnails
FLAT_NORM = 1e-3  # a thumbnail with less spread than this (gray levels) is flat
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


# --------------------------------------------------------------------------- hashing


def _dct_matrix(n: int) -> torch.Tensor:
    """DCT-II matrix ``D`` (scipy's unnormalised convention, as imagehash uses): ``D @ x`` is the DCT
    of the column vector ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    return 2.0 * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))


@dataclass(frozen=True)
class Fingerprints:
    """Per image: the 64-bit pHash, and the zero-mean unit-norm 16 x 16 grayscale thumbnail that
    confirms a hash match (Pearson correlation = dot product)."""

    hashes: np.ndarray  # uint64 [N]
    thumbnails: np.ndarray  # float32 [N, 256], zero mean, unit norm (zeros for a flat image)
    means: np.ndarray  # float32 [N], mean gray level of the thumbnail (compares flat images)
    mirror_hashes: np.ndarray | None = None  # uint64 [N], the hashes of the left-right flipped images

    def __len__(self) -> int:
        return len(self.hashes)

    def mirrored(self) -> Fingerprints:
        """The fingerprints of the left-right flipped images (computed in the same pass)."""
        if self.mirror_hashes is None:
            raise ValueError("computed without mirror=True")
        side = THUMB_SIZE
        thumbnails = np.ascontiguousarray(self.thumbnails.reshape(-1, side, side)[:, :, ::-1]).reshape(len(self), -1)
        return Fingerprints(self.mirror_hashes, thumbnails, self.means)


def _gray_batches(images: torch.Tensor, batch_pixels: int):
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got {tuple(images.shape)}")
    per_image = max(1, images[0].numel()) if len(images) else 1
    batch = max(1, batch_pixels // per_image)
    for start in range(0, images.shape[0], batch):
        chunk = images[start : start + batch].to("cpu", torch.float32)
        yield start, chunk if chunk.shape[1] == 1 else chunk.mean(dim=1, keepdim=True)


def _resampling(length: int, size: int) -> torch.Tensor:
    """``[size, length]`` matrix resampling a 1-D signal to ``size`` values: box-filter averaging
    (adaptive average pooling) from longer signals, linear interpolation from shorter ones. Both
    are separable and commute with a flip, so ``R_h @ image @ R_w.T`` resizes an image."""
    impulses = torch.eye(length, dtype=torch.float64)[:, None, :]
    if length >= size:
        resampled = F.adaptive_avg_pool1d(impulses, size)
    else:
        resampled = F.interpolate(impulses, size=size, mode="linear", align_corners=False)
    return resampled[:, 0, :].T.contiguous()


def _bits(values: torch.Tensor) -> np.ndarray:
    """Rows of 64 values -> uint64 hashes: bit ``63 - k`` set when value ``k`` is above the row's median."""
    median = values.median(dim=1, keepdim=True).values
    return np.packbits((values > median).numpy(), axis=1).view(">u8")[:, 0]


def fingerprints(images: torch.Tensor, batch_pixels: int = 1 << 24, mirror: bool = False) -> Fingerprints:
    """:func:`perceptual_hash` and the verification thumbnails of a uint8 ``[N, C, H, W]`` tensor;
    with ``mirror``, also the hashes of the flipped images (a flip negates the odd horizontal
    frequencies of the DCT, so they cost almost nothing)."""
    count = images.shape[0]
    hashes = np.empty(count, dtype=np.uint64)
    mirror_hashes = np.empty(count, dtype=np.uint64) if mirror else None
    thumbnails = np.zeros((count, THUMB_SIZE * THUMB_SIZE), dtype=np.float32)
    means = np.zeros(count, dtype=np.float32)
    height, width = images.shape[-2:]
    # Resize to 32 x 32 then keep the 8 x 8 lowest DCT frequencies, or average 2 x 2 blocks into the
    # 16 x 16 thumbnail: each is one linear map per axis, applied as two small matrix products.
    dct = _dct_matrix(DCT_SIZE)[:HASH_SIZE]
    pool = torch.kron(
        torch.eye(THUMB_SIZE, dtype=torch.float64),
        torch.full((1, DCT_SIZE // THUMB_SIZE), THUMB_SIZE / DCT_SIZE, dtype=torch.float64),
    )
    rows, columns = _resampling(height, DCT_SIZE).float(), _resampling(width, DCT_SIZE)
    hash_columns, thumb_columns = dct @ columns, (pool @ columns).float()
    flip_signs = torch.tensor(
        [(-1.0) ** column for _ in range(HASH_SIZE) for column in range(HASH_SIZE)], dtype=torch.float64
    )
    for start, gray in _gray_batches(images, batch_pixels):
        stop = start + len(gray)
        resized_rows = rows @ gray[:, 0]  # [B, 32, W]
        low = (dct @ resized_rows.double() @ hash_columns.T).reshape(len(gray), -1)
        hashes[start:stop] = _bits(low)
        if mirror_hashes is not None:
            mirror_hashes[start:stop] = _bits(low * flip_signs)
        thumb = (pool.float() @ resized_rows @ thumb_columns.T).reshape(len(gray), -1)
        mean = thumb.mean(dim=1, keepdim=True)
        centred = thumb - mean
        norm = centred.norm(dim=1, keepdim=True)
        flat = norm < FLAT_NORM
        normalised = centred / norm.clamp_min(FLAT_NORM)
        thumbnails[start:stop] = torch.where(flat, torch.zeros_like(centred), normalised).numpy()
        means[start:stop] = mean[:, 0].numpy()
    return Fingerprints(hashes, thumbnails, means, mirror_hashes)


def perceptual_hash(images: torch.Tensor, batch_pixels: int = 1 << 24) -> np.ndarray:
    """64-bit DCT pHash of each image of a uint8 ``[N, C, H, W]`` tensor, as ``uint64 [N]``.

    Channels are averaged to gray, the image is resized to 32 x 32 (box-filter averaging from larger
    images, bilinear from smaller ones), and bit ``63 - k`` of the hash says whether the ``k``-th of
    the 8 x 8 lowest 2-D DCT coefficients (row-major, DC included) is above their median. Batches hold about
    ``batch_pixels`` input values, so a split of 224 px images never needs more than ~100 MB at a time.
    Half the bits are set (exactly 32 unless coefficients tie), so distances between hashes are almost always even.
    """
    return fingerprints(images, batch_pixels).hashes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise Hamming distance between uint64 hashes."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def correlation(a: Fingerprints, i: np.ndarray, b: Fingerprints, j: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Pearson correlation of the 16 x 16 thumbnails of pairs ``(a[i], b[j])``.

    Two flat (constant) images correlate 1 when their gray levels are within 2 of each other, else 0;
    a flat image and a textured one correlate 0.
    """
    out = np.empty(len(i), dtype=np.float32)
    for start in range(0, len(i), block):
        ii, jj = i[start : start + block], j[start : start + block]
        out[start : start + block] = np.einsum("nk,nk->n", a.thumbnails[ii], b.thumbnails[jj])
    flat_a = ~a.thumbnails[i].any(axis=1) if len(i) else np.zeros(0, dtype=bool)
    flat_b = ~b.thumbnails[j].any(axis=1) if len(j) else np.zeros(0, dtype=bool)
    both = flat_a & flat_b
    out[both] = (np.abs(a.means[i[both]] - b.means[j[both]]) <= 2.0).astype(np.float32)
    return out


# --------------------------------------------------------------------------- searching


def near_duplicate_pairs(
    a: np.ndarray, b: np.ndarray, threshold: int, method: Literal["auto", "index", "brute"] = "auto"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` with ``hamming(a[i], b[j]) <= threshold``.

    Returns ``(i, j, distance)`` as int64 arrays sorted by ``(i, j)``. ``auto`` uses the
    multi-index search unless the hashes are so clustered that it would compare more pairs than a
    quarter of the full product, then the chunked brute force; both return the same pairs.
    """
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold must be in [0, 63], got {threshold}")
    if method not in ("auto", "index", "brute"):
        raise ValueError(f"unknown method {method!r}; accepted: auto, index, brute")
    empty = np.empty(0, dtype=np.int64)
    if len(a) == 0 or len(b) == 0:
        return empty, empty, empty
    if method == "brute":
        return _brute_pairs(a, b, threshold)
    budget = None if method == "index" else max(1, len(a) * len(b) // 4)
    found = _index_pairs(a, b, threshold, budget)
    return _brute_pairs(a, b, threshold) if found is None else found


def _chunk_masks(threshold: int) -> list[tuple[int, np.uint64]]:
    """(shift, mask) of ``threshold + 1`` disjoint bit ranges covering the 64 bits."""
    bounds = np.linspace(0, 64, threshold + 2).round().astype(int)
    return [(int(lo), np.uint64((1 << int(hi - lo)) - 1)) for lo, hi in itertools.pairwise(bounds)]


def _index_pairs(a, b, threshold, budget, block_candidates: int = 1 << 22):
    """Multi-index hashing; ``None`` when it would compare more than ``budget`` pairs.

    Candidates are expanded for blocks of queries of about ``block_candidates`` pairs at a time,
    so memory stays bounded however clustered the hashes are.
    """
    tables = []
    total = 0
    for shift, mask in _chunk_masks(threshold):
        keys_a = (a >> np.uint64(shift)) & mask
        order = np.argsort(keys_a, kind="stable")
        sorted_keys = keys_a[order]
        keys_b = (b >> np.uint64(shift)) & mask
        left = np.searchsorted(sorted_keys, keys_b, side="left")
        counts = np.searchsorted(sorted_keys, keys_b, side="right") - left
        total += int(counts.sum())
        if budget is not None and total > budget:
            return None
        tables.append((order, left, counts))
    found = []
    for order, left, counts in tables:
        ends = np.cumsum(counts)
        start = 0
        while start < len(b):
            stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + block_candidates, side="right"))
            stop = max(stop, start + 1)
            block_counts = counts[start:stop]
            if block_counts.any():
                j = np.repeat(np.arange(start, stop, dtype=np.int64), block_counts)
                offsets = np.arange(len(j), dtype=np.int64) - np.repeat(
                    np.cumsum(block_counts) - block_counts, block_counts
                )
                i = order[np.repeat(left[start:stop], block_counts) + offsets].astype(np.int64)
                keep = hamming(a[i], b[j]) <= threshold
                found.append(i[keep] * len(b) + j[keep])
            start = stop
    pair_ids = np.unique(np.concatenate(found)) if found else np.empty(0, dtype=np.int64)
    i, j = pair_ids // len(b), pair_ids % len(b)
    return i, j, hamming(a[i], b[j])


def _brute_pairs(a, b, threshold, block_values: int = 1 << 23):
    """XOR + popcount of blocks of ``b`` against all of ``a`` (about ``block_values`` at a time)."""
    rows = max(1, block_values // len(a))
    found_i, found_j = [], []
    for start in range(0, len(b), rows):
        distance = np.bitwise_count(np.bitwise_xor(b[start : start + rows, None], a[None, :]))
        j, i = np.nonzero(distance <= threshold)
        found_i.append(i.astype(np.int64))
        found_j.append(j.astype(np.int64) + start)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    return i, j, hamming(a[i], b[j])


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class DuplicatePair:
    """One near-duplicate pair: image ``first_index`` of split ``first``, ``second_index`` of ``second``."""

    first: str
    first_index: int
    second: str
    second_index: int
    distance: int  # pHash Hamming distance
    correlation: float  # of the 16 x 16 thumbnails
    first_label: int
    second_label: int


@dataclass(frozen=True)
class SplitPairCount:
    pairs: int  # near-duplicate (first, second) pairs
    first_images: int  # distinct images of the first split involved
    second_images: int  # distinct images of the second split with a near-duplicate in the first
    label_conflicts: int  # pairs whose two labels differ
    hash_matches: int  # pairs within the pHash threshold, before the correlation check


@dataclass(frozen=True)
class DuplicateReport:
    """Near-duplicates across each split pair (train-val, train-test, val-test)."""

    dataset: str
    threshold: int
    min_correlation: float
    counts: Mapping[tuple[str, str], SplitPairCount]
    pairs: tuple[DuplicatePair, ...] = ()  # at most ``max_pairs``, by split pair then index
    pairs_truncated: bool = False
    sizes: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(count.pairs for count in self.counts.values())

    @property
    def clean(self) -> bool:
        return self.total == 0

    def count(self, first: str, second: str) -> int:
        """Near-duplicate pairs between two splits (in either order)."""
        key = (first, second) if (first, second) in self.counts else (second, first)
        return self.counts[key].pairs

    def as_metrics(self) -> dict[str, float]:
        """For MLflow, per split pair: ``duplicates_train_test`` (pairs), ``duplicates_train_test_images``
        (distinct test images with a near-duplicate in train), ``..._label_conflicts`` (pairs whose
        labels differ); and ``duplicates_total``."""
        metrics: dict[str, float] = {}
        for (first, second), count in self.counts.items():
            metrics[f"duplicates_{first}_{second}"] = float(count.pairs)
            metrics[f"duplicates_{first}_{second}_images"] = float(count.second_images)
            metrics[f"duplicates_{first}_{second}_label_conflicts"] = float(count.label_conflicts)
        metrics["duplicates_total"] = float(self.total)
        return metrics

    def as_table(self):
        """One row per split pair (a pandas DataFrame), e.g. for a CSV artifact or a Markdown table."""
        import pandas as pd

        rows = [
            {
                "splits": f"{first}-{second}",
                "pairs": count.pairs,
                "first_images": count.first_images,
                "second_images": count.second_images,
                "second_size": self.sizes.get(second, 0),
                "label_conflicts": count.label_conflicts,
                "hash_matches": count.hash_matches,
            }
            for (first, second), count in self.counts.items()
        ]
        frame = pd.DataFrame(rows)
        frame.attrs.update(dataset=self.dataset, threshold=self.threshold, min_correlation=self.min_correlation)
        return frame

    def pairs_table(self, names: Mapping[str, list[str]] | None = None):
        """The listed pairs (a pandas DataFrame); ``names`` (split -> file of each index, as
        :func:`ssl_hpc.data.image_folder.image_folder_files` gives) adds the two files."""
        import pandas as pd

        columns = [
            "first",
            "first_index",
            "second",
            "second_index",
            "distance",
            "correlation",
            "first_label",
            "second_label",
        ]
        rows = [{name: getattr(pair, name) for name in columns} for pair in self.pairs]
        frame = pd.DataFrame(rows, columns=columns)
        if names is not None:
            frame["first_file"] = [names[p.first][p.first_index] for p in self.pairs]
            frame["second_file"] = [names[p.second][p.second_index] for p in self.pairs]
        return frame

    def summary(self) -> str:
        return ", ".join(
            f"{first}-{second}: {count.pairs} pairs ({count.second_images} {second} images)"
            for (first, second), count in self.counts.items()
        )


def _matching_pairs(first: Fingerprints, variants: list[Fingerprints], threshold: int, min_correlation: float):
    """Pairs (first[i], second[j]) matching ``second`` as is or any of its ``variants`` (its mirror
    image): ``((i, j, distance, correlation), hash_matches)``, one row per pair, sorted by (i, j)."""
    found = []
    for variant in variants:
        i, j, distance = near_duplicate_pairs(first.hashes, variant.hashes, threshold)
        found.append((i, j, distance, correlation(first, i, variant, j)))
    i, j, distance, corr = (np.concatenate(parts) for parts in zip(*found))
    matches = len(np.unique(i * len(variants[0]) + j))
    keep = corr >= min_correlation
    i, j, distance, corr = i[keep], j[keep], distance[keep], corr[keep]
    order = np.lexsort((-corr, j, i))  # a pair found as is and mirrored: keep the better-correlated row
    i, j, distance, corr = i[order], j[order], distance[order], corr[order]
    first_of_pair = np.ones(len(i), dtype=bool)
    first_of_pair[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return (i[first_of_pair], j[first_of_pair], distance[first_of_pair], corr[first_of_pair]), matches


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
