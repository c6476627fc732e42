#!/usr/bin/env python
"""The aggregation step: ``python launch/aggregate.py SWEEP.yaml [--set dotted.key=value ...]``.

Fusion ensembles, the final tables, statistics and plots from the sweep's FINISHED fine-tune runs,
written to ``results/<sweep name>/`` and to the sweep's ``aggregate`` MLflow run.
"""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # runs from a clone even without `pip install -e .`

from ssl_hpc.cli import aggregate_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(aggregate_main(sys.argv[1:], project_root=PROJECT_ROOT))
