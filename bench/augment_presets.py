#!/usr/bin/env python
"""Do the X-ray views help on X-rays? SimCLR on PneumoniaMNIST with the ``natural`` and the ``xray``
view presets, each over several seeds, compared by the same frozen linear probe.

``natural`` is SimCLR's recipe (crops down to 20 % of the image, flips); ``xray`` keeps crops to at
least half the image and flips only left-right (ssl_hpc.data.augment). Everything else is the same:
the pretraining optimiser, the epochs, the probe. Test AUC and accuracy per preset as mean ± sd over
the seeds, and the across-seed paired test (paired by seed) of the difference. Reported whatever it
shows: a few epochs on 28 px images may not separate them.

Runs through the suite's own pipeline (sweep -> local backend -> MLflow in a temporary store).
Last output line: a JSON object with ``seeds`` and, per preset, ``auc_mean``, ``auc_sd``, ``acc_mean``,
``acc_sd``, then ``p_value`` (paired t-test over seeds of the AUC).

Usage: MEDMNIST_ROOT=../shared/data python bench/augment_presets.py [--seeds 0 1 2] [--pretrain-epochs 3]
"""

from __future__ import annotations

import argparse
import json

from _common import LINEAR_PROBE, run_sweep_in_temporary_store
from ssl_hpc.evaluate.stats import mean_std, seed_paired_t_test

PRESETS = ("natural", "xray")


def recipe(seeds: list[int], pretrain_epochs: int, probe_epochs: int) -> dict:
    return {
        "name": "bench-augment-presets",
        "seeds": seeds,
        "grid": {
            "dataset": ["pneumoniamnist"],
            "size": [28],
            "backbone": ["resnet18"],
            "label_fraction": [1.0],
            "class_weight": ["none"],
            "finetune": ["frozen"],
        },
        "variants": {f"simclr_{preset}": {"method": "simclr", "pretrain": {"modality": preset}} for preset in PRESETS},
        "pretrain": {"epochs": pretrain_epochs, "batch_size": 128},
        "finetune": {**LINEAR_PROBE, "epochs": probe_epochs},
        "model": {"stem": "imagenet"},
        "cam": {"enabled": False},
        "data": {"duplicates": "off"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--probe-epochs", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    jobs, metrics, minutes = run_sweep_in_temporary_store(
        recipe(args.seeds, args.pretrain_epochs, args.probe_epochs), args.overrides
    )
    results: dict[str, dict[int, dict[str, float]]] = {preset: {} for preset in PRESETS}
    for job in jobs:
        if job.stage == "finetune":
            results[job.model_name.removeprefix("simclr_")][job.config.seed] = metrics[job.key]
    summary: dict = {"seeds": args.seeds}
    for preset in PRESETS:
        auc = mean_std([results[preset][s]["test_auc"] for s in args.seeds])
        acc = mean_std([results[preset][s]["test_acc"] for s in args.seeds])
        summary[preset] = {"auc_mean": auc[0], "auc_sd": auc[1], "acc_mean": acc[0], "acc_sd": acc[1]}
        print(f"{preset:8s} test AUC {auc[0]:.4f} ± {auc[1]:.4f}   test acc {acc[0]:.4f} ± {acc[1]:.4f}")
    test = seed_paired_t_test(
        [results["natural"][s]["test_auc"] for s in args.seeds], [results["xray"][s]["test_auc"] for s in args.seeds]
    )
    summary["xray_minus_natural_auc"] = test.difference
    summary["p_value"] = test.p_value
    summary["minutes"] = round(minutes, 1)
    print(f"xray - natural AUC: {test.difference:+.4f} (paired t over {len(args.seeds)} seeds, p = {test.p_value:.3f})")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}, default=str))


if __name__ == "__main__":
    main()
