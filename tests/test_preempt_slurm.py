"""Preemption on a real Slurm cluster: a job killed outright resumes when the sweep is re-run. (The
preemption signal -- requeue, resume into the same run -- is tested on the two-node cluster,
tests/test_multinode.py, where the requeued job may land on the other node.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_sweep_cli, slurm_records
from ssl_hpc.files import load_checkpoint
from ssl_hpc.models.methods import METHODS

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SSL = next(
    (name for name in ("simclr", "mocov2", "rotnet") if name in METHODS and METHODS[name].needs_pretraining), None
)
SLURM = [
    "--backend",
    "slurm",
    "--set",
    "slurm.profile=local",
    "--set",
    "runtime.num_threads=1",
    "--set",
    "runtime.checkpoint_every_s=0",  # every epoch: the kill lands after a known checkpoint
    "--quiet",
    "--set",
    "slurm.aggregate.enabled=false",
]
FINETUNE_METRICS = ("train_loss", "val_loss", "val_acc")
PRETRAIN_METRICS = ("train_loss",)


def checkpoint_epoch(path: Path) -> int:
    try:
        return int(load_checkpoint(path)["epoch"]) if path.is_file() else -1
    except Exception:  # replaced while being read
        return -1


def wait_for_checkpoints(paths: list[Path], epoch: int, cluster, job_ids: list[str], timeout: float = 900) -> None:
    deadline = time.time() + timeout
    while not all(checkpoint_epoch(path) >= epoch for path in paths):
        assert cluster.queue(job_ids), "the jobs ended before they could be interrupted"
        assert time.time() < deadline, f"no checkpoint of epoch {epoch} in {paths} after {timeout}s"
        time.sleep(0.2)


def wait_requeued(cluster, job_id: str, timeout: float = 120) -> None:
    """A requeued job waits PENDING (BeginTime, ~2 min on Slurm 22.05): seen here, then released at once."""
    deadline = time.time() + timeout
    while True:
        state, reason = cluster.queue([job_id]).get(job_id, ("", ""))
        if state == "PENDING" and reason == "BeginTime":
            return
        assert time.time() < deadline, f"job {job_id} was not requeued: {state} ({reason})"
        time.sleep(0.3)


def assert_every_epoch_once(client: MlflowClient, run, metrics: tuple[str, ...], epochs: int) -> None:
    for name in metrics:
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, name))
        assert steps == list(range(epochs)), (run.data.tags["key"], name, steps)


def test_preempt_kill_without_signal_resumes_when_the_sweep_is_rerun(
    tmp_path, data_root, tracking_uri, slurm_cluster, slurm_cleanup, sweep_here
):
    """Two runs packed in one allocation are killed outright (SIGKILL: no chance to requeue); re-running the
    sweep resubmits both and each resumes from its last checkpoint into its own MLflow run."""
    outputs = tmp_path / "outputs"
    root = outputs / "killed"
    slurm_cleanup(root)
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri}
    epochs = 4  # the two runs of the pack do not keep pace on a busy machine: leave room after the first checkpoint
    args = [
        "sweeps/smoke.yaml",
        *SLURM,
        "--set",
        f"output_dir={outputs}",
        "--set",
        "name=killed",
        "--set",
        "grid.label_fraction=[0.25]",
        "--set",
        f"finetune.epochs={epochs}",
        "--set",
        "slurm.pack=2",
        "--set",
        "slurm.cpus_per_job=2",
    ]
    result = run_sweep_cli(args, env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    records = slurm_records(root)
    assert len(records) == 2 and len({r["job_id"] for r in records}) == 1
    job_id = records[0]["job_id"]
    checkpoints = {r["key"]: root / r["key"] / "last.pt" for r in records}
    wait_for_checkpoints(list(checkpoints.values()), epoch=0, cluster=slurm_cluster, job_ids=[job_id])
    slurm_cluster.run("scancel", "--signal=KILL", job_id)  # no USR2: no chance to requeue itself
    slurm_cluster.wait_gone([job_id], timeout=300, release_requeued=False)
    killed_at = {key: checkpoint_epoch(path) for key, path in checkpoints.items()}
    assert all(0 <= epoch < epochs - 1 for epoch in killed_at.values()), killed_at
    client = MlflowClient(tracking_uri)
    before = {
        run.data.tags["key"]: run for run in client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    }
    assert set(before) == set(killed_at) and all(run.info.status == "RUNNING" for run in before.values())

    code, out = sweep_here([*args, "--status"], env)
    assert code == 0 and out.count("re-run the sweep to resume from its checkpoint") == 2, out

    code, out = sweep_here(args, env)
    assert code == 0 and "killed: 2 submitted" in out, out
    new = slurm_records(root)[-1]
    assert new["job_id"] != job_id
    slurm_cluster.wait_gone([new["job_id"]], timeout=900)
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert len(runs) == 2
    for run in runs:
        key = run.data.tags["key"]
        assert run.info.run_id == before[key].info.run_id  # the same MLflow run
        assert run.info.status == "FINISHED" and run.data.tags["attempts"] == "2"
        assert int(run.data.tags["resumed_after_epoch"]) == killed_at[key]
        assert run.data.tags["slurm_job_id"] == new["job_id"]
        assert_every_epoch_once(client, run, FINETUNE_METRICS, epochs)
