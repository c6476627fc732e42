"""Cluster profiles are validated like sweeps: a bad one is refused before anything is submitted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from ssl_hpc.cli import sweep_main
from ssl_hpc.config import ConfigError, load_sweep
from ssl_hpc.launchers.profiles import available_profiles, load_profile

SWEEP = {
    "name": "profiles",
    "grid": {"dataset": ["pneumoniamnist"], "method": ["supervised"]},
    "finetune": {"epochs": 1},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    monkeypatch.delenv("SSL_HPC_SLURM_PROFILE", raising=False)
    root = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT / "slurm" / "profiles", root / "slurm" / "profiles")
    return root


def write(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def submit(tmp_path: Path, project: Path, *extra: str) -> int:
    sweep = write(tmp_path / "sweep.yaml", SWEEP)
    return sweep_main(
        [str(sweep), "--backend", "slurm", "--set", f"output_dir={tmp_path / 'outputs'}", *extra], project_root=project
    )


def assert_nothing_submitted(tmp_path: Path, project: Path) -> None:
    assert not (tmp_path / "outputs").exists()  # no submissions record, no logs folder
    assert not (tmp_path / "store").exists()  # no MLflow store either
    assert not (project / "mlflow").exists() and not (project / "outputs").exists()


@pytest.mark.parametrize(
    "profile,expected",
    [
        ({"partition": "debug", "partitoin": "gpu"}, ["partitoin", "unknown field", "accepted:", "partition"]),
        ({"partition": "debug", "time_min": -30}, ["time_min", "greater than 0"]),
        ({"partition": "debug", "time_min": 0}, ["time_min", "greater than 0"]),
        ({"partition": "debug", "cpus_per_job": "many"}, ["cpus_per_job", "integer"]),
        ({"partition": "debug", "extra_sbatch": ["--array=0-3"]}, ["extra_sbatch", "--array is set by the backend"]),
        ({"partition": "debug", "extra_sbatch": ["reservation=x"]}, ["extra_sbatch", "not an sbatch option"]),
        # a newline would end the #SBATCH line and run the rest as a command in the job script
        ({"partition": "debug\ntouch /tmp/owned #"}, ["partition", "not a Slurm name", "accepted characters"]),
        ({"partition": "debug", "aggregate": {"partition": "a'b"}}, ["aggregate.partition", "not a Slurm name"]),
        ({"partition": "debug", "time_min": 2, "signal_delay_s": 120}, ["signal_delay_s", "shorter than time_min"]),
    ],
)
def test_bad_profile_file_is_refused_before_submission(tmp_path, project, capsys, profile, expected):
    path = write(tmp_path / "cluster.yaml", {**profile, "single_node": True})
    code = submit(tmp_path, project, "--set", f"slurm.profile={path}")
    assert code == 2
    error = capsys.readouterr().err
    assert str(path) in error, error
    for fragment in expected:
        assert fragment in error, error
    assert_nothing_submitted(tmp_path, project)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("slurm.time_min=-5", ["slurm.time_min", "greater than 0"]),
        ("slurm.partitoin=gpu", ["slurm.partitoin", "unknown field", "accepted:"]),
        ("slurm.pack=0", ["slurm.pack", "greater than or equal to 1"]),
    ],
)
def test_bad_profile_override_in_the_sweep_is_refused(tmp_path, project, capsys, override, expected):
    code = submit(tmp_path, project, "--set", "slurm.profile=local", "--set", override)
    assert code == 2
    error = capsys.readouterr().err
    for fragment in expected:
        assert fragment in error, error
    assert_nothing_submitted(tmp_path, project)


def test_sweep_override_of_a_profile_section_keeps_its_other_fields(tmp_path):
    path = write(tmp_path / "cluster.yaml", {"partition": "gpu", "aggregate": {"partition": "prepost", "cpus": 4}})
    profile = load_profile(str(path), PROJECT_ROOT, {"aggregate": {"time_min": 30}})
    assert (profile.aggregate.partition, profile.aggregate.cpus, profile.aggregate.time_min) == ("prepost", 4, 30)


def test_unknown_profile_name_lists_the_available_ones(tmp_path, project, capsys):
    code = submit(tmp_path, project, "--set", "slurm.profile=nope")
    assert code == 2
    error = capsys.readouterr().err
    assert "slurm.profile" in error and "nope" in error and "local" in error, error
    assert_nothing_submitted(tmp_path, project)


def test_no_profile_at_all_is_refused(tmp_path, project, capsys):
    assert submit(tmp_path, project) == 2
    error = capsys.readouterr().err
    assert "slurm.profile" in error and "SSL_HPC_SLURM_PROFILE" in error, error
    assert_nothing_submitted(tmp_path, project)


def test_sqlite_store_is_refused_on_a_multi_node_cluster(tmp_path, project, capsys):
    """Jobs on other nodes cannot share one SQLite file: the sweep must log to a tracking server."""
    path = write(tmp_path / "cluster.yaml", {"partition": "gpu", "gpus_per_job": 1})
    assert submit(tmp_path, project, "--set", f"slurm.profile={path}") == 2
    error = capsys.readouterr().err
    assert "SQLite" in error and "mlflow/serve.sh" in error and "MLFLOW_TRACKING_URI" in error, error
    assert_nothing_submitted(tmp_path, project)


def test_loopback_tracking_server_is_refused_on_a_multi_node_cluster(tmp_path, project, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    path = write(tmp_path / "cluster.yaml", {"partition": "gpu"})
    assert submit(tmp_path, project, "--set", f"slurm.profile={path}") == 2
    assert "loopback" in capsys.readouterr().err


def test_shipped_profiles_are_valid():
    names = available_profiles(PROJECT_ROOT)
    assert {"local", "vulkan", "national"} <= set(names)
    for name in names:
        profile = load_profile(name, PROJECT_ROOT)
        assert profile.time_min > 0
    assert load_profile("local", PROJECT_ROOT).single_node
    assert load_profile("vulkan", PROJECT_ROOT).sbatch_options() == {"mail-type": "FAIL"}


def test_sweep_overrides_win_over_the_profile(tmp_path):
    sweep = load_sweep(write(tmp_path / "s.yaml", {**SWEEP, "slurm": {"profile": "local", "pack": 4, "time_min": 15}}))
    profile = load_profile(sweep.slurm.profile, PROJECT_ROOT, sweep.slurm.overrides)
    assert (profile.pack, profile.time_min, profile.partition) == (4, 15, "debug")


def test_malformed_profile_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("partition: [debug\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_profile(str(path), PROJECT_ROOT)
