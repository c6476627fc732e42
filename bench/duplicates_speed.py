"""Speed of the leakage guard (ssl_hpc.data.duplicates) at MedMNIST sizes, and its report on the real
PneumoniaMNIST. Not a test: prints a table, and a JSON object as its last line.

    python bench/duplicates_speed.py [--medmnist-root ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_hpc.data.duplicates import duplicate_report, fingerprints, near_duplicate_pairs  # noqa: E402


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def random_hashes(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 2**63, count, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, count, dtype=np.uint64)


def clustered_hashes(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    """Hashes scattered 6-16 bits around real pHashes: as clustered as a medical dataset's, or more."""
    picked = centres[rng.integers(0, len(centres), count)]
    noise = np.zeros(count, dtype=np.uint64)
    for k in range(count):
        for bit in rng.choice(64, size=int(rng.integers(6, 17)), replace=False):
            noise[k] |= np.uint64(1 << int(bit))
    return picked ^ noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medmnist-root", type=Path, default=Path(os.environ.get("MEDMNIST_ROOT", "../shared/data")))
    parser.add_argument("--quick", action="store_true", help="skip the 100k x 7k brute-force reference")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    results: dict[str, float] = {}

    for label, (n_train, n_test) in {"20k_x_5k": (20_000, 5_000), "100k_x_7k": (100_000, 7_000)}.items():
        a, b = random_hashes(rng, n_train), random_hashes(rng, n_test)
        b[:50] = a[:50] ^ np.uint64(0b1011)  # planted: 3 bits away
        for threshold in (4, 8):
            for method in ("index", "brute"):
                if method == "brute" and args.quick and n_train > 50_000:
                    continue
                (i, _, _), seconds = timed(near_duplicate_pairs, a, b, threshold, method)
                results[f"random_{label}_t{threshold}_{method}_s"] = round(seconds, 3)
                print(f"random hashes {label:10} threshold {threshold}  {method:5}  {seconds:7.3f} s  {len(i)} pairs")

    root = args.medmnist_root
    if (root / "pneumoniamnist.npz").is_file():
        from ssl_hpc.data.medmnist import load_medmnist

        dataset = load_medmnist("pneumoniamnist", 28, root, download=False)
        report, seconds = timed(duplicate_report, dataset)
        results["pneumoniamnist_report_s"] = round(seconds, 3)
        print(f"\nPneumoniaMNIST (28 px, {report.sizes}): {report.summary()} in {seconds:.2f} s")
        print(report.as_table().to_string(index=False))
        print(report.pairs_table().to_string(index=False))
        results.update({k: v for k, v in report.as_metrics().items()})
        centres = fingerprints(dataset.train.images).hashes
        a, b = clustered_hashes(rng, centres, 100_000), clustered_hashes(rng, centres, 7_000)
        (i, _, _), seconds = timed(near_duplicate_pairs, a, b, 8)
        results["clustered_100k_x_7k_t8_auto_s"] = round(seconds, 3)
        print(f"\nclustered hashes 100k x 7k threshold 8 auto  {seconds:7.3f} s  {len(i)} hash matches")
    else:
        print(f"\n(no pneumoniamnist.npz in {root}: skipping the real-data report)")

    images = torch.randint(0, 256, (100_000, 3, 28, 28), dtype=torch.uint8)
    _, seconds = timed(fingerprints, images)
    results["fingerprint_100k_28px_rgb_s"] = round(seconds, 3)
    print(f"fingerprints of 100k 28 px RGB images: {seconds:.2f} s")
    images = torch.randint(0, 256, (5_000, 1, 224, 224), dtype=torch.uint8)
    _, seconds = timed(fingerprints, images)
    results["fingerprint_5k_224px_gray_s"] = round(seconds, 3)
    print(f"fingerprints of 5k 224 px gray images: {seconds:.2f} s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
