"""Searching: the pairs of images whose hashes are within the threshold, then confirmed on the thumbnails.

Comparisons scale to MedMNIST sizes (100k train x 10k val/test) by multi-index hashing: with the
64 bits cut into ``threshold + 1`` chunks, two hashes within ``threshold`` bits agree exactly on at
least one chunk (pigeonhole), so only pairs sharing a chunk value are compared. When the hashes
are too clustered for that to prune, a chunked brute force (XOR + popcount on packed uint64) runs
instead; both give exactly the same pairs.

:func:`_matching_pairs` then keeps the hash matches whose thumbnails correlate enough, a mirrored
image's included.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np

from ssl_hpc.data.duplicates.hashing import Fingerprints, correlation, hamming


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
