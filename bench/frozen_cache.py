#!/usr/bin/env python
"""Frozen fine-tuning on cached features against recomputing the features every epoch.

A frozen ResNet-18 (ImageNet stem, the ``random_init`` method: no pretraining job to wait for; the
features' quality does not change what is timed) with the thesis's fine-tune recipe (linear head,
batch 128, SGD lr 0.05 halved every 20 epochs, 100 epochs, the epoch with the best val accuracy
kept), no augmentation, on PneumoniaMNIST at 28 px. The same sweep runs twice in this process through
the suite's own pipeline (sweep -> local backend -> MLflow in a temporary store), on 2 CPU threads:
once as runs are made (``runtime.feature_cache: true``: the backbone runs once per run) and once with
``runtime.feature_cache: false`` (the backbone runs on every batch of every epoch, as before the cache).
The two runs have the same key and must reach the same test accuracy up to floating-point noise.

Figures: each path's wall seconds for the whole job (data, MLflow, training, test, artifacts) and its
``train_seconds`` (the epochs, plus the feature extraction for the cached path). ``speedup`` is the
ratio of whole-job seconds (the conservative one: the fixed costs are in both), ``train_speedup`` that
of ``train_seconds``. Acceptance: speedup >= 5 and test accuracies within 0.5 points.

Last output line: a JSON object with ``speedup``, ``acc_cached``, ``acc_uncached`` and more.

Usage: MEDMNIST_ROOT=../shared/data python bench/frozen_cache.py [--epochs 100] [--threads 2] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json

import torch

from _common import run_sweep_in_temporary_store


def recipe(epochs: int, threads: int) -> dict:
    return {
        "name": "bench-frozen-cache",
        "seeds": [621],
        "grid": {
            "dataset": ["pneumoniamnist"],
            "size": [28],
            "method": ["random_init"],
            "backbone": ["resnet18"],
            "label_fraction": [1.0],
            "class_weight": ["none"],
            "finetune": ["frozen"],
        },
        "finetune": {"epochs": epochs, "augment": "none"},  # the thesis's defaults otherwise
        "model": {"stem": "imagenet"},
        "data": {"duplicates": "off"},  # the leakage guard is no part of what is compared
        "cam": {"enabled": False},
        "runtime": {"device": "cpu", "num_threads": threads},
    }


def run(epochs: int, threads: int, cache: bool, overrides: list[str]) -> dict[str, float]:
    overrides = [*overrides, f"runtime.feature_cache={'true' if cache else 'false'}"]
    jobs, metrics, minutes = run_sweep_in_temporary_store(recipe(epochs, threads), overrides)
    (job,) = [job for job in jobs if job.stage == "finetune"]
    found = metrics[job.key]
    return {"seconds": minutes * 60, **{name: found[name] for name in ("train_seconds", "test_acc", "test_auc")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, cache in (("cached", True), ("uncached", False)):
        results[name] = result = run(args.epochs, args.threads, cache, args.overrides)
        print(
            f"{name:>8}: {result['seconds']:7.1f} s for the job, {result['train_seconds']:7.1f} s training, "
            f"test acc {result['test_acc']:.4f}, test AUC {result['test_auc']:.4f}",
            flush=True,
        )
    cached, uncached = results["cached"], results["uncached"]
    speedup = uncached["seconds"] / cached["seconds"]
    acc_gap_points = 100 * abs(cached["test_acc"] - uncached["test_acc"])
    summary = {
        "speedup": round(speedup, 2),
        "acc_cached": round(cached["test_acc"], 4),
        "acc_uncached": round(uncached["test_acc"], 4),
        "train_speedup": round(uncached["train_seconds"] / cached["train_seconds"], 2),
        "seconds_cached": round(cached["seconds"], 1),
        "seconds_uncached": round(uncached["seconds"], 1),
        "auc_cached": round(cached["test_auc"], 4),
        "auc_uncached": round(uncached["test_auc"], 4),
        "acc_gap_points": round(acc_gap_points, 3),
        "epochs": args.epochs,
        "threads": args.threads,
        "accepted": bool(speedup >= 5 and acc_gap_points <= 0.5),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
