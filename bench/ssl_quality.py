#!/usr/bin/env python
"""Does self-supervised pretraining learn anything? SSL features against random features.

An SSL method (``--method``, default SimCLR) pretrains a backbone (``--backbone``, default ResNet-18)
for a few epochs on the PneumoniaMNIST train split (no labels); then
the same frozen linear probe (the fine-tune stage's ``frozen`` mode with a linear head) is trained
on its features and on the features of a randomly initialised backbone of the same architecture
(the ``random_init`` method). Both probes see the same labels, epochs and optimiser; the only
difference is the backbone's weights. Test AUC is the figure; SSL must win clearly.

Runs through the suite's own pipeline (sweep -> local backend -> MLflow in a temporary store).
Last output line: a JSON object with ``ssl_probe_auc`` and ``random_probe_auc``.

Usage: MEDMNIST_ROOT=../shared/data python bench/ssl_quality.py [--method simclr] [--pretrain-epochs 10] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json

from _common import LINEAR_PROBE, run_sweep_in_temporary_store


def recipe(method: str, backbone: str, pretrain_epochs: int, probe_epochs: int) -> dict:
    return {
        "name": "bench-ssl-quality",
        "seeds": [621],
        "grid": {
            "dataset": ["pneumoniamnist"],
            "size": [28],
            "method": [method, "random_init"],
            "backbone": [backbone],
            "label_fraction": [1.0],
            "class_weight": ["none"],
            "finetune": ["frozen"],
        },
        "pretrain": {"epochs": pretrain_epochs, "batch_size": 128},
        "finetune": {**LINEAR_PROBE, "epochs": probe_epochs},
        "model": {"stem": "imagenet"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="simclr", help="the SSL method (its own pretraining defaults)")
    parser.add_argument("--backbone", default="resnet18", help="e.g. vit_mini for MAE and AIM (both models use it)")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--probe-epochs", type=int, default=15)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    jobs, metrics, minutes = run_sweep_in_temporary_store(
        recipe(args.method, args.backbone, args.pretrain_epochs, args.probe_epochs), args.overrides
    )
    probe = {job.config.method: metrics[job.key] for job in jobs if job.stage == "finetune"}
    pretrain = next(metrics[job.key] for job in jobs if job.stage == "pretrain")
    ssl_auc, random_auc = probe[args.method]["test_auc"], probe["random_init"]["test_auc"]
    result = {
        "method": args.method,
        "backbone": args.backbone,
        "ssl_probe_auc": round(ssl_auc, 4),
        "random_probe_auc": round(random_auc, 4),
        "auc_gain": round(ssl_auc - random_auc, 4),
        "ssl_probe_acc": round(probe[args.method]["test_acc"], 4),
        "random_probe_acc": round(probe["random_init"]["test_acc"], 4),
        "ssl_knn_val_acc": round(pretrain["knn_val_acc"], 4),
        "pretrain_epochs": args.pretrain_epochs,
        "probe_epochs": args.probe_epochs,
        "minutes": round(minutes, 1),
        "ssl_wins_clearly": bool(ssl_auc - random_auc >= 0.03),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
