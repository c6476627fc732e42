#!/usr/bin/env python
"""The main job: ``python launch/sweep.py SWEEP.yaml [--backend ...] [--dry-run] [--status] [--set k=v]``."""

import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))  # runs from a clone even without `pip install -e .`

from ssl_hpc.cli import sweep_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(sweep_main(sys.argv[1:], project_root=PROJECT_ROOT))
