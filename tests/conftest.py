"""Shared fixtures. Real data comes from MEDMNIST_ROOT; under CI=true it must be there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_real_data() -> Path:
    """The folder holding the real pneumoniamnist.npz; skips (or fails under CI) without it."""
    root = os.environ.get("MEDMNIST_ROOT")
    if root and (Path(root) / "pneumoniamnist.npz").is_file():
        return Path(root).resolve()
    reason = "MEDMNIST_ROOT does not point at a folder with pneumoniamnist.npz (e.g. ../shared/data)"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def data_root() -> Path:
    return require_real_data()


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def run_sweep_cli(args: list[str], env_extra: dict[str, str], timeout: float = 900,
                  wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    """Runs ``python launch/sweep.py ARGS`` as a user would, in a fresh process."""
    env = {**os.environ, **env_extra}
    command = [sys.executable, str(PROJECT_ROOT / "launch" / "sweep.py"), *args]
    if not wait:
        return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)
