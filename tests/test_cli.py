"""The sweep command refuses bad input before creating anything, and says why."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import run_sweep_cli
from ssl_hpc.cli import sweep_main

GOOD = {
    "name": "cli",
    "grid": {"dataset": ["pneumoniamnist"], "method": ["supervised"]},
    "finetune": {"epochs": 1},
}


def write(tmp_path: Path, content: dict | str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project root in tmp: the default store and outputs would be created under it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "project"
    root.mkdir()
    return root


def assert_nothing_created(project: Path) -> None:
    assert not (project / "mlflow").exists()
    assert not (project / "outputs").exists()


@pytest.mark.parametrize(
    "content,expected",
    [
        ({**GOOD, "grid": {**GOOD["grid"], "method": ["simclr_typo"]}}, ["grid.method", "accepted:", "supervised"]),
        ({**GOOD, "grid": {**GOOD["grid"], "label_fraction": [1.5]}}, ["grid.label_fraction", "(0, 1]"]),
        ({**GOOD, "grid": {**GOOD["grid"], "dataset": ["pneumonia"]}}, ["grid.dataset[0]", "pneumoniamnist"]),
        ("name: cli\ngrid: {dataset: [pneumoniamnist\n", ["malformed YAML at line"]),
        ({**GOOD, "finetune": {"epochs": -1}}, ["finetune.epochs", "greater than or equal to 0"]),
    ],
)
def test_bad_sweeps_exit_nonzero_naming_the_field(tmp_path, project, capsys, content, expected):
    code = sweep_main([str(write(tmp_path, content))], project_root=project)
    assert code == 2
    error = capsys.readouterr().err
    for fragment in expected:
        assert fragment in error, error
    assert_nothing_created(project)


def test_bad_override_is_refused(tmp_path, project, capsys):
    code = sweep_main([str(write(tmp_path, GOOD)), "--set", "grid.method=[nope]"], project_root=project)
    assert code == 2 and "grid.method" in capsys.readouterr().err
    assert_nothing_created(project)


def test_missing_dataset_names_file_and_folder(tmp_path, project, capsys):
    empty = tmp_path / "no-data"
    empty.mkdir()
    sweep = {
        **GOOD,
        "grid": {**GOOD["grid"], "dataset": ["bloodmnist"]},
        "data_root": str(empty),
        "data": {"download": False},
    }
    code = sweep_main([str(write(tmp_path, sweep))], project_root=project)
    assert code == 2
    error = capsys.readouterr().err
    assert "bloodmnist.npz" in error and str(empty) in error and "MEDMNIST_ROOT" in error
    assert_nothing_created(project)


def test_dry_run_lists_jobs_and_creates_nothing(tmp_path, project, capsys):
    code = sweep_main([str(write(tmp_path, GOOD)), "--dry-run"], project_root=project)
    assert code == 0
    out = capsys.readouterr().out
    assert "1 jobs: 0 pretrain, 1 finetune" in out
    assert_nothing_created(project)


def test_status_before_anything_ran_is_all_pending(tmp_path, project, capsys):
    code = sweep_main([str(write(tmp_path, GOOD)), "--status"], project_root=project)
    assert code == 0
    assert "1 pending, 0 running, 0 finished, 0 failed" in capsys.readouterr().out
    assert_nothing_created(project)


def test_the_real_entry_point_exits_nonzero(tmp_path):
    path = write(tmp_path, {**GOOD, "grid": {**GOOD["grid"], "method": ["mocov3"]}, "output_dir": str(tmp_path / "o")})
    result = run_sweep_cli([str(path)], {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm' / 'db'}"}, timeout=120)
    assert result.returncode == 2
    assert "grid.method" in result.stderr and "mocov3" in result.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path / "o").exists()


def test_a_bad_sweep_is_refused_before_torch_is_imported(tmp_path):
    """Fast refusal: the sweep's schema is checked before torch, MLflow or Ray are imported."""
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ngrid:\n  dataset: [pneumoniamnist]\n  method: [supervised]\nfinetune: {epochs: -1}\n")
    code = (
        "import sys; from pathlib import Path; from ssl_hpc.cli import sweep_main; "
        f"code = sweep_main([{str(bad)!r}], Path('.')); "
        "heavy = [m for m in ('torch', 'mlflow', 'ray') if m in sys.modules]; "
        "assert code == 2 and not heavy, (code, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "finetune.epochs" in result.stderr
