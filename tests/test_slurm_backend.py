"""``--backend slurm`` on a real single-node Slurm cluster (slurm/local/up.sh): submission, idempotence,
dependencies, aggregation, failures and ``--status``."""

from __future__ import annotations

import getpass
import shutil
import subprocess

import pytest
from mlflow import MlflowClient

from conftest import PROJECT_ROOT, run_sweep_cli, slurm_records

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

SSL = "simclr"  # a method with a pretraining stage
SLURM = ["--backend", "slurm", "--set", "slurm.profile=local", "--set", "runtime.num_threads=1", "--quiet"]
EPOCH_METRICS = ("train_loss", "val_loss", "val_acc")


def runs_of(tracking_uri: str, experiment: str):
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return client, (client.search_runs([found.experiment_id]) if found else [])


def submit(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    result = run_sweep_cli(args, env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def job_ids(root) -> list[str]:
    return sorted({record["job_id"] for record in slurm_records(root)})


def test_smoke_sweep_on_slurm_queues_every_run_once(
    tmp_path, subset_root, tracking_uri, slurm_cluster, slurm_cleanup, sweep_here
):
    outputs = tmp_path / "outputs"
    root = outputs / "smoke"
    slurm_cleanup(root)
    env = {"MEDMNIST_ROOT": str(subset_root), "MLFLOW_TRACKING_URI": tracking_uri}
    common = [
        "sweeps/smoke.yaml",
        *SLURM,
        "--set",
        f"output_dir={outputs}",
        "--set",
        "finetune.epochs=1",
        "--set",
        "slurm.aggregate.enabled=false",
    ]
    # 1. Half of the sweep, as a user runs it; its two runs packed into one allocation of 2 CPUs.
    half = [*common, "--set", "grid.label_fraction=[0.25]", "--set", "slurm.pack=2", "--set", "slurm.cpus_per_job=2"]
    first = submit(half, env)
    assert "smoke: 2 submitted, 0 already queued" in first.stdout, first.stdout
    records = slurm_records(root)
    assert len(records) == 2 and len({r["job_id"] for r in records}) == 1  # one Slurm job runs both
    assert records[0]["job_id"] in first.stdout
    # 2. The same command again while they are pending or running: nothing is submitted twice.
    code, out = sweep_here(half, env)
    assert code == 0 and "smoke: 0 submitted, 2 already queued" in out, out
    assert len(slurm_records(root)) == 2
    slurm_cluster.wait_gone(job_ids(root), timeout=900)
    # 3. The whole smoke sweep: only the missing runs are queued, as arrays of one task (MaxArraySize=1),
    #    and no more than MaxSubmitJobs allows (this user's queued jobs + 1): one now, the other next time.
    queued_now = len(
        [line for line in slurm_cluster.run("squeue", "-h", "-r", "-u", getpass.getuser()).splitlines() if line.strip()]
    )
    code, out = sweep_here(
        [*common, "--set", "slurm.max_array_size=1", "--set", f"slurm.max_submit_jobs={queued_now + 1}"], env
    )
    assert (
        code == 0 and "smoke: 1 submitted, 0 already queued, 2 finished, 0 running elsewhere, 1 not submitted" in out
    ), out
    assert f"MaxSubmitJobs ({queued_now + 1}) reached" in out
    code, out = sweep_here([*common, "--set", "slurm.max_array_size=1"], env)
    assert code == 0 and "smoke: 1 submitted, 1 already queued, 2 finished" in out, out
    records = slurm_records(root)
    assert len(records) == 4 and len({r["job_id"] for r in records}) == 3
    slurm_cluster.wait_gone(job_ids(root), timeout=900)
    # 4. Everything FINISHED: re-submitting queues nothing.
    code, out = sweep_here(common, env)
    assert code == 0 and "smoke: 0 submitted, 0 already queued, 4 finished" in out, out
    assert len(slurm_records(root)) == 4

    client, runs = runs_of(tracking_uri, "smoke")
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    by_key = {r["key"]: r for r in slurm_records(root)}
    for run in runs:
        tags = run.data.tags
        record = by_key[tags["key"]]
        assert tags["slurm_job_id"] == record["job_id"]
        assert tags["slurm_array_index"] == ("none" if record["index"] is None else str(record["index"]))
        assert tags["slurm_pack_size"] == str(len(record["pack"]))
        assert tags.get("mlflow.source.git.commit") and tags.get("git_dirty") in ("true", "false")
        if tags["git_dirty"] == "true":
            assert "git_diff.patch" in {item.path for item in client.list_artifacts(run.info.run_id)}
        for name in EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [0]
        assert (root / "slurm" / "logs" / f"{record['job_id']}_0_log.out").is_file()  # logs in the sweep's folder
    accounting = slurm_cluster.accounting(job_ids(root))
    assert {row["JobID"] for row in accounting} == set(job_ids(root))
    assert all(row["State"] == "COMPLETED" for row in accounting), accounting

    code, out = sweep_here(
        ["sweeps/smoke.yaml", "--status", "--set", f"output_dir={outputs}", "--set", "finetune.epochs=1"], env
    )
    assert code == 0 and "0 pending, 0 running, 4 finished, 0 failed" in out, out
    assert all(f"slurm {job_id}" in out for job_id in job_ids(root))


def test_finetune_waits_for_its_pretraining_job_then_aggregation_runs(
    tmp_path, subset_root, tracking_uri, slurm_cluster, slurm_cleanup
):
    name = f"slurm_order_{tmp_path.name[-12:]}"
    outputs = tmp_path / "outputs"
    root = outputs / name
    slurm_cleanup(root)
    env = {"MEDMNIST_ROOT": str(subset_root), "MLFLOW_TRACKING_URI": tracking_uri}
    args = [
        "sweeps/smoke.yaml",
        *SLURM,
        "--set",
        f"output_dir={outputs}",
        "--set",
        f"name={name}",
        "--set",
        f"grid.method=[{SSL},supervised]",
        "--set",
        "grid.label_fraction=[0.25]",
        "--set",
        "grid.class_weight=[none]",
        "--set",
        "grid.finetune=[frozen]",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "finetune.epochs=1",
    ]
    try:
        result = submit(args, env)
        assert f"{name}: 3 submitted" in result.stdout, result.stdout
        records = {r["key"]: r for r in slurm_records(root)}
        assert "aggregate" in records, result.stdout  # the final job, afterany on everything
        slurm_cluster.wait_gone(job_ids(root), timeout=1200)
        client, runs = runs_of(tracking_uri, name)
        stages = sorted(run.data.tags["stage"] for run in runs)
        assert stages == ["aggregate", "finetune", "finetune", "pretrain"], stages
        assert all(run.info.status == "FINISHED" for run in runs), [(r.data.tags["key"], r.info.status) for r in runs]
        pretrain = next(r for r in records.values() if r["stage"] == "pretrain")
        dependent = next(r for r in records.values() if r["dependency"])
        assert dependent["dependency"] == f"afterok:{pretrain['job_id']}"
        rows = {row["JobID"]: row for row in slurm_cluster.accounting(job_ids(root))}
        ends = [slurm_cluster.timestamp(rows[r["job_id"]]["End"]) for r in records.values() if r["key"] != "aggregate"]
        # Slurm's own records: the fine-tune job started only after its pretraining job ended ...
        assert slurm_cluster.timestamp(rows[dependent["job_id"]]["Start"]) >= slurm_cluster.timestamp(
            rows[pretrain["job_id"]]["End"]
        ), rows
        # ... and the aggregation after every run.
        assert slurm_cluster.timestamp(rows[records["aggregate"]["job_id"]]["Start"]) >= max(ends), rows
        assert all(row["State"] == "COMPLETED" for row in rows.values()), rows
    finally:
        shutil.rmtree(PROJECT_ROOT / "results" / name, ignore_errors=True)
        (PROJECT_ROOT / "results" / f".{name}.lock").unlink(missing_ok=True)
        try:
            (PROJECT_ROOT / "results").rmdir()  # only if the aggregation created it and left nothing else
        except OSError:
            pass


def test_a_real_failure_is_reported_with_its_reason_and_not_retried(
    tmp_path, data_root, tracking_uri, slurm_cluster, slurm_cleanup, sweep_here
):
    """An exception on the node (here: asking for a GPU the node does not have) fails the job once; jobs
    that needed it are cancelled by Slurm; --status says why."""
    outputs = tmp_path / "outputs"
    root = outputs / "slurm_fail"
    slurm_cleanup(root)
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri}
    methods = f"[{SSL}]"
    args = [
        "sweeps/smoke.yaml",
        *SLURM,
        "--set",
        f"output_dir={outputs}",
        "--set",
        "name=slurm_fail",
        "--set",
        f"grid.method={methods}",
        "--set",
        "grid.label_fraction=[0.25]",
        "--set",
        "grid.class_weight=[none]",
        "--set",
        "grid.finetune=[frozen]",
        "--set",
        "runtime.device=cuda",
        "--set",
        "slurm.aggregate.enabled=false",
    ]
    submit(args, env)
    ids = job_ids(root)
    slurm_cluster.wait_gone(ids, timeout=600, release_requeued=False)
    rows = slurm_cluster.accounting(ids, duplicates=True)
    first = slurm_records(root)[0]
    attempts = [row for row in rows if row["JobID"] == first["job_id"]]
    assert [row["State"] for row in attempts] == ["FAILED"], rows  # one attempt: not requeued, not retried
    client, runs = runs_of(tracking_uri, "slurm_fail")
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "cuda" in runs[0].data.tags["error"] and runs[0].data.tags["error_type"] == "RuntimeError"

    code, out = sweep_here([*args, "--status"], env)
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line[:12] in {r["key"] for r in slurm_records(root)}}
    failed = lines[first["key"]]
    assert " failed " in failed and f"slurm {first['job_id']} FAILED (exit" in failed, out
    assert "RuntimeError: runtime.device is 'cuda'" in failed, out
    dependent = slurm_records(root)[1]
    assert "CANCELLED (its pretraining job failed)" in lines[dependent["key"]], out
