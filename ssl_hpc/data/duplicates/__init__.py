"""Leakage guard: near-duplicate images across the train / val / test splits.

A test image whose twin (the same scan, re-encoded, brightened or resized) sits in the training
split measures memory, not generalisation. DermaMNIST is known to have such duplicates across its
official splits (Abhishek et al., Scientific Data 2025), and the pulmonary report augmented before
splitting, which puts augmented copies of test images into training.

Two images are near-duplicates when their 64-bit perceptual hashes differ in at most ``threshold``
bits *and* their 16 x 16 grayscale thumbnails correlate (Pearson) at least ``min_correlation``; a
left-right mirrored copy (a common augmentation) counts too. The hash alone is too coarse at 28 px:
on the real PneumoniaMNIST, distinct chest X-rays are often 4-8 bits apart, while a JPEG re-encoded
or noisy copy can be 6-8 bits away from its original.
Calibration (PneumoniaMNIST, 28 px): copies of 300 test images (brightened +30, contrast x0.8, JPEG
q60, resized down and up, Gaussian noise sigma 5, mirrored) are all within 8 bits and correlate
>= 0.987; among the 54k cross-split pairs of distinct images within 12 bits (2.3k mirrored), none
correlates above 0.971. Hence the defaults: 8 bits, correlation 0.98.

The pieces, one module each:

``hashing``
    the fingerprint of each image: its pHash and the thumbnail that confirms a match;
``search``
    the pairs within the hash threshold, fast at MedMNIST sizes, confirmed on the thumbnails;
``report``
    what was found, as counts, listed pairs, MLflow metrics and tables;
``leakage``
    the guard run before training, and the comparison of an extra image source with a split.
"""

from ssl_hpc.data.duplicates.hashing import (
    DCT_SIZE,
    FLAT_NORM,
    HASH_SIZE,
    THUMB_SIZE,
    Fingerprints,
    correlation,
    fingerprints,
    hamming,
    perceptual_hash,
)
from ssl_hpc.data.duplicates.leakage import (
    DEFAULT_MIN_CORRELATION,
    DEFAULT_THRESHOLD,
    MAX_LISTED_PAIRS,
    SPLIT_PAIRS,
    SPLITS,
    LeakageError,
    LeakageMode,
    check_leakage,
    duplicate_report,
    duplicates_between,
)
from ssl_hpc.data.duplicates.report import DuplicatePair, DuplicateReport, SplitPairCount
from ssl_hpc.data.duplicates.search import near_duplicate_pairs

__all__ = [
    "DCT_SIZE",
    "DEFAULT_MIN_CORRELATION",
    "DEFAULT_THRESHOLD",
    "FLAT_NORM",
    "HASH_SIZE",
    "MAX_LISTED_PAIRS",
    "SPLITS",
    "SPLIT_PAIRS",
    "THUMB_SIZE",
    "DuplicatePair",
    "DuplicateReport",
    "Fingerprints",
    "LeakageError",
    "LeakageMode",
    "SplitPairCount",
    "check_leakage",
    "correlation",
    "duplicate_report",
    "duplicates_between",
    "fingerprints",
    "hamming",
    "near_duplicate_pairs",
    "perceptual_hash",
]
