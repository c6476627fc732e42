"""README command 1 end to end on real PneumoniaMNIST: the smoke sweep, re-run, interrupt, resume."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import PROJECT_ROOT, run_sweep_cli
from ssl_hpc.files import load_checkpoint

pytestmark = pytest.mark.e2e

EPOCH_METRICS = ("train_loss", "val_loss", "val_acc")
TAGS = ("sweep", "key", "stage", "method", "backbone", "dataset", "label_fraction", "class_weight", "finetune", "seed")
ARTIFACTS = {
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "test_probs.npz",
    "val_probs.npz",
    "curves.png",
    "model.pt",
}


def runs_of(tracking_uri: str, experiment: str, stage: str = "finetune"):
    """The experiment's runs of one stage (the sweep's last step adds a ``stage=aggregate`` run)."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id], f"tags.stage = '{stage}'") if found else [])


def histories(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in EPOCH_METRICS}


def test_smoke_sweep_runs_then_reruns_nothing(tmp_path, data_root, tracking_uri):
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri}
    outputs = tmp_path / "outputs"
    first = run_sweep_cli(
        ["sweeps/smoke.yaml", "--set", f"output_dir={outputs}", "--set", f"results_dir={tmp_path / 'results'}"], env
    )
    assert first.returncode == 0, first.stdout + first.stderr
    client, runs = runs_of(tracking_uri, "smoke")
    assert len(runs) == 4
    smoke = yaml.safe_load((PROJECT_ROOT / "sweeps" / "smoke.yaml").read_text())
    epochs = smoke["finetune"]["epochs"]
    seen_budgets = set()
    for run in runs:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert all(tags.get(tag) for tag in TAGS), tags
        assert (tags["stage"], tags["method"], tags["dataset"]) == ("finetune", "supervised", "pneumoniamnist")
        # the ResNet-18's CAMs at 28 px show something (Grad-CAM's were blank for half the images)
        assert run.data.metrics["cam_gradcampp_blank_fraction"] <= 0.1, run.data.metrics
        assert -1.0 <= run.data.metrics["cam_gradcampp_randomization_spearman"] <= 1.0
        seen_budgets.add((tags["label_fraction"], tags["class_weight"]))
        metrics = run.data.metrics
        for name in (
            "test_acc",
            "test_balanced_acc",
            "test_auc",
            "test_f1_macro",
            "test_kappa",
            "test_acc_class_0",
            "test_acc_class_1",
        ):
            assert name in metrics, name
        assert 0.0 <= metrics["test_acc"] <= 1.0
        assert metrics["test_balanced_acc"] == pytest.approx(
            (metrics["test_acc_class_0"] + metrics["test_acc_class_1"]) / 2
        )
        for name, history in histories(client, run.info.run_id).items():
            assert [step for step, _ in history] == list(range(epochs)), name
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert ARTIFACTS <= artifacts, artifacts
    assert seen_budgets == {
        ("1.0", "none"),
        ("1.0", "inverse_count_complement"),
        ("0.25", "none"),
        ("0.25", "inverse_count_complement"),
    }
    before = {run.info.run_id: histories(client, run.info.run_id) for run in runs}

    second = run_sweep_cli(
        ["sweeps/smoke.yaml", "--set", f"output_dir={outputs}", "--set", f"results_dir={tmp_path / 'results'}"], env
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4 skipped" in second.stdout
    client, again = runs_of(tracking_uri, "smoke")
    assert {run.info.run_id for run in again} == set(before)
    assert {run.info.run_id: histories(client, run.info.run_id) for run in again} == before
    _, aggregate = runs_of(tracking_uri, "smoke", stage="aggregate")
    assert len(aggregate) == 1  # the re-run replaced the tables, it did not add a second aggregate run

    status = run_sweep_cli(
        [
            "sweeps/smoke.yaml",
            "--status",
            "--set",
            f"output_dir={outputs}",
            "--set",
            f"results_dir={tmp_path / 'results'}",
        ],
        env,
    )
    assert status.returncode == 0
    assert "4 finished" in status.stdout


def wait_for_checkpoint(path: Path, epoch: int, process, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()
        if path.is_file():
            try:
                if load_checkpoint(path)["epoch"] >= epoch:
                    return
            except Exception:  # replaced while we read it
                pass
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} at {path} within {timeout}s")


def test_killed_mid_epoch_resumes_into_the_same_run(tmp_path, data_root, tracking_uri):
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri}
    outputs = tmp_path / "outputs"
    args = [
        "sweeps/smoke.yaml",
        "--set",
        f"output_dir={outputs}",
        "--set",
        f"results_dir={tmp_path / 'results'}",
        "--set",
        "name=resume",
        "--set",
        "grid.label_fraction=[0.25]",  # a quarter of the epoch's work: the resume is what is under test
        "--set",
        "grid.class_weight=[none]",
        "--set",
        "finetune.epochs=4",
        "--set",
        "runtime.keep_checkpoints=true",
        "--set",
        "runtime.checkpoint_every_s=0",  # every epoch: the kill lands after a known checkpoint
        "--set",
        "cam.enabled=false",
    ]
    dry = run_sweep_cli([*args, "--dry-run"], env)
    key = dry.stdout.splitlines()[1].split()[0]
    process = run_sweep_cli(args, env, wait=False)
    try:
        wait_for_checkpoint(outputs / "resume" / key / "last.pt", epoch=1, process=process)
        time.sleep(2.0)  # well inside epoch 2 (an epoch takes several seconds here)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    client, runs = runs_of(tracking_uri, "resume")
    assert len(runs) == 1 and runs[0].info.status == "RUNNING"
    interrupted_at = load_checkpoint(outputs / "resume" / key / "last.pt")["epoch"]
    assert interrupted_at < 3

    status = run_sweep_cli([*args, "--status"], env)
    assert "pending" in status.stdout and "will resume from checkpoint" in status.stdout

    resumed = run_sweep_cli(args, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client, runs = runs_of(tracking_uri, "resume")
    assert len(runs) == 1, "resuming must not create a second run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["attempts"] == "2"
    assert int(run.data.tags["resumed_after_epoch"]) == interrupted_at  # did not restart from epoch 0
    for name, history in histories(client, run.info.run_id).items():
        assert sorted(step for step, _ in history) == [0, 1, 2, 3], (name, history)  # no gap, no duplicate
    assert "test_acc" in run.data.metrics
