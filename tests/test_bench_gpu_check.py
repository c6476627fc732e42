"""bench/gpu_check.py stays runnable where there is no GPU: the same code on the CPU, tiny sizes, one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT, require_real_data


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, bench/gpu_check.py is the real check: run it")
def test_gpu_check_runs_on_the_cpu_and_says_so():
    env_root = str(require_real_data())
    result = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--quick"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "MEDMNIST_ROOT": env_root},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["device"] == "cpu" and report["quick"] is True
    tests = report["gpu_tests"]
    assert tests["tests"] >= 4 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    assert any("no CUDA" in reason for reason in tests["skip_reasons"])
    for step in ("supervised_images_per_s", "simclr_images_per_s"):
        assert all(value > 0 for value in report[step].values()) and {"ours", "limit"} <= set(report[step])
    assert set(report["pack_images_per_s"]) == {"1", "2"} and report["full_grid_device_hours"] > 0
