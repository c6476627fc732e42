#!/usr/bin/env python
"""Hyperparameter search with Ray Tune: ``python launch/tune.py SWEEP.yaml [--set dotted.key=value ...]``.

The search space, metric and ASHA scheduler are the sweep's ``tune:`` section; every trial is one
MLflow run of the sweep's experiment with the sweep command's keys and tags.
"""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # runs from a clone even without `pip install -e .`

from ssl_hpc.cli import tune_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(tune_main(sys.argv[1:], project_root=PROJECT_ROOT))
