#!/usr/bin/env python
"""Is SimCLR better than the supervised reference with a quarter of the labels, beyond seed noise?

SimCLR (frozen backbone + linear head, and end to end) against the supervised ResNet-18 reference on
PneumoniaMNIST with 25 % of the labels, each over several seeds (a seed changes the pretraining, the
label subset and the fine-tuning). Per model: test accuracy as mean ± sd over seeds; per SimCLR mode:
the paired t-test across seeds against the reference and whether it survives Holm's correction over the
two comparisons. Reported whatever it shows.

Runs through the suite's own pipeline (sweep -> local backend -> MLflow in a temporary store).
Last output line: a JSON object with ``seeds`` and per model ``mean`` and ``sd`` (test accuracy, %),
and per SimCLR mode ``p_value``, ``p_holm``, ``significant``.

Usage: MEDMNIST_ROOT=../shared/data python bench/ssl_seeds.py [--seeds 0 1 2] [--pretrain-epochs 3]
"""

from __future__ import annotations

import argparse
import json

from _common import run_sweep_in_temporary_store
from ssl_hpc.evaluate.stats import holm, mean_std, seed_paired_t_test


def recipe(seeds: list[int], pretrain_epochs: int, finetune_epochs: int) -> dict:
    return {
        "name": "bench-ssl-seeds",
        "seeds": seeds,
        "grid": {
            "dataset": ["pneumoniamnist"],
            "size": [28],
            "method": ["supervised", "simclr"],
            "backbone": ["resnet18"],
            "label_fraction": [0.25],
            "class_weight": ["none"],
            "finetune": ["frozen", "end_to_end"],
        },
        "pretrain": {"epochs": pretrain_epochs, "batch_size": 128},
        "finetune": {"epochs": finetune_epochs, "batch_size": 128, "lr": 0.05, "select_by": "val_acc"},
        "model": {"stem": "imagenet"},
        "cam": {"enabled": False},
        "data": {"duplicates": "off"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    jobs, metrics, minutes = run_sweep_in_temporary_store(
        recipe(args.seeds, args.pretrain_epochs, args.finetune_epochs), args.overrides
    )
    accuracy: dict[str, dict[int, float]] = {}
    for job in jobs:
        if job.stage == "finetune":
            name = "supervised" if job.config.method == "supervised" else f"simclr/{job.config.finetune}"
            accuracy.setdefault(name, {})[job.config.seed] = 100 * metrics[job.key]["test_acc"]
    summary: dict = {"seeds": args.seeds}
    for name in sorted(accuracy):
        mean, sd = mean_std([accuracy[name][s] for s in args.seeds])
        summary[name] = {"mean": round(mean, 2), "sd": round(sd, 2)}
        print(f"{name:20s} test accuracy {mean:.2f} ± {sd:.2f} % over {len(args.seeds)} seeds")
    compared = ["simclr/frozen", "simclr/end_to_end"]
    reference = [accuracy["supervised"][s] for s in args.seeds]
    tests = [seed_paired_t_test(reference, [accuracy[name][s] for s in args.seeds]) for name in compared]
    for name, test, adjusted in zip(compared, tests, holm([t.p_value for t in tests])):
        significant = bool(adjusted < 1 - args.confidence)
        summary[name].update(p_value=round(test.p_value, 4), p_holm=round(float(adjusted), 4), significant=significant)
        print(
            f"{name} - supervised: {test.difference:+.2f} points, paired t over seeds p = {test.p_value:.3f}, "
            f"Holm {adjusted:.3f}: {'significant' if significant else 'not significant'} at {1 - args.confidence:g}"
        )
    summary["minutes"] = round(minutes, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
