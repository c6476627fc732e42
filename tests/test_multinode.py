"""The cluster as users run it: two compute nodes in network namespaces, a PostgreSQL-backed tracking server
with credentials on the login node, jobs that reach it only over the network (`pytest -k multinode`).

The end-to-end sweep runs once (module fixture); the fault tests each submit a small sweep of their own.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_sweep_cli, slurm_records
from multinode import LOGIN_ADDRESS, NODES, STATE, multinode_fixture, wait  # noqa: F401  (the fixture)
from test_preempt_slurm import checkpoint_epoch, wait_requeued

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.multinode]

SLURM = [
    "--backend",
    "slurm",
    "--set",
    "slurm.profile=local_multinode",
    "--set",
    "runtime.num_threads=1",
    "--set",
    "runtime.checkpoint_every_s=0",  # every epoch: the preemptions land after a known checkpoint
    "--quiet",
]


def sweep_args(cluster, name: str, *sets: str, sweep: str = "sweeps/smoke.yaml") -> list[str]:
    args = [sweep, *SLURM]
    for value in (
        f"name={name}",
        f"output_dir={cluster.shared / 'outputs'}",
        f"results_dir={cluster.shared / 'results'}",
        *sets,
    ):
        args += ["--set", value]
    return args


def sqlite_files(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and (path.suffix in (".db", ".sqlite") or path.read_bytes()[:16] == b"SQLite format 3\0"):
                found.append(path)
    return found


def accounting(cluster, job_ids: list[str], duplicates: bool = False) -> list[dict[str, str]]:
    """sacct rows (allocations only); with ``duplicates``, every attempt of a requeued job, in order."""
    fields = ["JobID", "JobName", "State", "Start", "End", "NodeList"]
    bases = sorted({job_id.split("_")[0] for job_id in job_ids})
    args = ["sacct", "-X", "-n", "-P", "-j", ",".join(bases), f"--format={','.join(fields)}"]
    out = cluster.cluster.run(*args, *(["-D"] if duplicates else []))
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def submit(cluster, name: str, *sets: str, sweep: str = "sweeps/smoke.yaml") -> tuple[Path, list[dict], str]:
    """The sweep command as a user runs it on the login node; the sweep's output root, its submission
    records and what the command printed."""
    result = run_sweep_cli(sweep_args(cluster, name, *sets, sweep=sweep), cluster.env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    root = cluster.shared / "outputs" / name
    return root, slurm_records(root), result.stdout


# --------------------------------------------------------------------------------------- the cluster itself


def test_multinode_cluster_has_two_nodes_that_see_only_what_is_shared(multinode, tmp_path):
    nodes = multinode.cluster.run("sinfo", "-h", "-N", "-o", "%N").split()
    assert sorted(set(nodes)) == list(NODES)
    assert multinode.on_node("node2", "hostname").strip() == "node2"
    assert multinode.on_node("node1", "hostname").strip() == "node1"
    # The login node's /tmp is not the node's; the shared folder is the same folder on both.
    secret = Path("/tmp") / f"ssl-hpc-login-only-{os.getpid()}"
    secret.write_text("login node only")
    (multinode.shared / "shared.txt").write_text("on the network filesystem\n")
    try:
        seen = multinode.on_node(
            "node2",
            f"test -e {secret} && echo visible || echo hidden; cat {multinode.shared / 'shared.txt'}; "
            f"ls {Path(__file__).resolve().parents[1] / 'mlflow'} | wc -l; "
            f"test -e {multinode.server_state} && echo server-visible || echo server-hidden",
        ).split("\n")
    finally:
        secret.unlink()
    assert seen[0] == "hidden"
    assert seen[1] == "on the network filesystem"
    assert seen[2].strip() == "0"  # the checkout's default SQLite store (mlflow/) is not there
    assert seen[3] == "server-hidden"  # nor the tracking server's database and artifacts
    # A node reaches the login node's tracking server through the bridge, and nothing outside the test net.
    reach = multinode.on_node(
        "node1",
        f"exec 3<>/dev/tcp/{LOGIN_ADDRESS}/{multinode.tracking_uri.rsplit(':', 1)[1]} && echo reached; "
        "timeout 3 bash -c 'exec 3<>/dev/tcp/192.0.2.1/80' 2>/dev/null && echo outside || echo isolated",
    ).split()
    assert reach == ["reached", "isolated"]


# ------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def smoke_ssl_multinode(multinode):
    """sweeps/smoke_ssl.yaml with two methods (one ResNet, one ViT) on both nodes, logging through the server."""
    root, records, printed = submit(
        multinode,
        "smoke_ssl_multinode",
        "grid.method=[simclr,mae]",
        "grid.label_fraction=[0.25]",
        "aggregate.fusions={pair: [simclr, mae]}",
        "aggregate.rules=[product, mean]",
        "slurm.cpus_per_job=1",
        sweep="sweeps/smoke_ssl.yaml",
    )
    multinode.cluster.wait_gone([r["job_id"] for r in records], timeout=1800)
    return root, records, printed


def test_multinode_smoke_ssl_end_to_end_through_the_tracking_server(multinode, smoke_ssl_multinode):
    root, records, _ = smoke_ssl_multinode
    client = MlflowClient(multinode.tracking_uri)
    experiment = client.get_experiment_by_name("smoke_ssl_multinode")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    training = [r for r in records if r["stage"] != "aggregate"]
    assert {run.data.tags["key"] for run in runs if run.data.tags.get("stage") != "aggregate"} == {
        r["key"] for r in training
    }
    for run in runs:
        assert run.info.status == "FINISHED", (run.data.tags.get("key"), run.data.tags.get("error"))
    # Both nodes ran jobs; every fine-tune job started after its pretraining job ended.
    rows = {row["JobID"]: row for row in accounting(multinode, [r["job_id"] for r in records])}
    assert {rows[r["job_id"]]["NodeList"] for r in training} == set(NODES), rows
    by_job = {r["job_id"]: r for r in records}
    for record in training:
        for dependency in record["dependency"].partition(":")[2].split(":") if record["dependency"] else []:
            before = rows[dependency]
            assert multinode.cluster.timestamp(rows[record["job_id"]]["Start"]) >= multinode.cluster.timestamp(
                before["End"]
            ), (record, before, by_job.get(dependency))
    # The pretrained weights went through the server: the fine-tune runs name the pretraining run whose
    # artifact they downloaded, and the artifact lives in the server's (proxied) store.
    pretrain_runs = {run.info.run_id: run for run in runs if run.data.tags.get("stage") == "pretrain"}
    assert pretrain_runs
    for run in pretrain_runs.values():
        assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
        assert "backbone.pt" in {item.path for item in client.list_artifacts(run.info.run_id)}
    finetuned_from = {
        run.data.tags.get("pretrain_run_id") for run in runs if run.data.tags.get("stage") == "finetune"
    } - {None}
    assert finetuned_from and finetuned_from <= set(pretrain_runs)
    # The aggregation job ran on a compute node; its results landed in results/<sweep>/.
    aggregate = next(r for r in records if r["stage"] == "aggregate")
    assert rows[aggregate["job_id"]]["State"] == "COMPLETED" and rows[aggregate["job_id"]]["NodeList"] in NODES
    assert (multinode.shared / "results" / "smoke_ssl_multinode" / "runs.csv").is_file()
    # No SQLite file anywhere: not in the outputs, the results, the checkout, the server's state.
    checkout = Path(__file__).resolve().parents[1]
    assert not sqlite_files(multinode.shared, multinode.server_state, checkout / "mlflow", STATE / "nodes")


# ----------------------------------------------------------------------------------------------- faults


def finished_runs_once(multinode, name: str, records: list[dict], epochs: dict[str, int]) -> dict[str, object]:
    """One FINISHED run per key (none left RUNNING or KILLED), each epoch's metrics exactly once."""
    client = MlflowClient(multinode.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.stage != 'aggregate'", max_results=1000)
    keys = [run.data.tags["key"] for run in runs]
    assert sorted(keys) == sorted({r["key"] for r in records if r["stage"] != "aggregate"}), keys  # one run per key
    by_key = {run.data.tags["key"]: run for run in runs}
    for key, run in by_key.items():
        assert run.info.status == "FINISHED", (key, run.data.tags.get("error"))
        metrics = ("train_loss",) if run.data.tags["stage"] == "pretrain" else ("train_loss", "val_loss", "val_acc")
        for metric in metrics:
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))
            assert steps == list(range(epochs[run.data.tags["stage"]])), (key, metric, steps)
    return by_key


def wait_for_checkpoint(multinode, root: Path, record: dict, timeout: float = 900) -> None:
    """Until the job runs and has written its first epoch checkpoint; fails at once if the job has ended."""

    def ready() -> bool:
        if not multinode.cluster.queue([record["job_id"]]):
            logs = sorted((root / "slurm" / "logs").glob(f"{record['job_id']}_*log.err"))
            raise AssertionError(f"job {record['job_id']} ended first: {logs[-1].read_text()[-2000:] if logs else ''}")
        return bool(running_with_checkpoint(multinode, root, [record]))

    wait(ready, timeout, f"a checkpoint of {record['key']}")


def running_with_checkpoint(multinode, root: Path, records: list[dict]) -> list[dict]:
    queue = multinode.cluster.queue([r["job_id"] for r in records])
    return [
        r
        for r in records
        if queue.get(r["job_id"], ("",))[0] == "RUNNING" and checkpoint_epoch(root / r["key"] / "last.pt") >= 0
    ]


def test_multinode_preempt_requeues_and_resumes_pretraining_and_finetuning(multinode):
    """A running pretraining job and a running fine-tuning job each get Slurm's preemption signal; each
    requeues (possibly onto the other node), resumes from its checkpoint, and ends as one FINISHED run."""
    name = "multinode_preempt"
    root, records, _ = submit(
        multinode,
        name,
        "grid.method=[simclr,supervised]",
        "grid.label_fraction=[1.0]",
        "grid.class_weight=[none]",
        "grid.finetune=[frozen]",
        "finetune.epochs=2",
        "pretrain.epochs=2",
        "methods.simclr.finetune.epochs=2",
        "slurm.aggregate.enabled=false",
    )
    first_wave = [r for r in records if not r["dependency"]]
    assert {r["stage"] for r in first_wave} == {"pretrain", "finetune"}
    interrupted: dict[str, int] = {}
    try:
        deadline = time.time() + 900
        while len(interrupted) < len(first_wave):
            for record in running_with_checkpoint(multinode, root, first_wave):
                if record["key"] not in interrupted:
                    interrupted[record["key"]] = checkpoint_epoch(root / record["key"] / "last.pt")
                    multinode.cluster.run("scancel", "--signal=TERM", record["job_id"])
                    multinode.cluster.run("scancel", "--signal=USR2", record["job_id"])
                    wait_requeued(multinode.cluster, record["job_id"])
                    multinode.cluster.run("scontrol", "update", f"jobid={record['job_id']}", "StartTime=now")
            assert time.time() < deadline, f"no epoch checkpoint to preempt at within 900 s: {interrupted}"
            time.sleep(0.2)
        multinode.cluster.wait_gone([r["job_id"] for r in records], timeout=1500)
    finally:
        multinode.cluster.cancel([r["job_id"] for r in records])
    by_key = finished_runs_once(multinode, name, records, {"pretrain": 2, "finetune": 2})
    for record in first_wave:
        tags = by_key[record["key"]].data.tags
        assert tags["attempts"] == "2" and int(tags["resumed_after_epoch"]) >= interrupted[record["key"]], tags
        assert tags["slurm_job_id"] == record["job_id"] and tags["slurm_restart_count"] == "1", tags
        assert "error" not in tags  # the interruption is not reported as an error once resumed
        rows = accounting(multinode, [record["job_id"]], duplicates=True)
        attempts = [row for row in rows if row["JobID"] == record["job_id"]]
        assert len(attempts) == 2 and attempts[-1]["State"] == "COMPLETED", attempts
    # The fine-tune job of the preempted pretraining job waited for it, through the requeue.
    pretrain = next(r for r in records if r["stage"] == "pretrain")
    dependent = next(r for r in records if r["dependency"])
    rows = {row["JobID"]: row for row in accounting(multinode, [pretrain["job_id"], dependent["job_id"]])}
    start, end = rows[dependent["job_id"]]["Start"], rows[pretrain["job_id"]]["End"]
    assert multinode.cluster.timestamp(start) >= multinode.cluster.timestamp(end), rows


def test_multinode_node_fail_requeues_onto_the_other_node_and_resumes(multinode):
    """A compute node dies mid-job (slurmd and the job's processes SIGKILLed): Slurm requeues the job onto
    the other node, it resumes from its last checkpoint, and the fine-tune job that depended on it runs."""
    name = "multinode_node_fail"
    root, records, _ = submit(
        multinode,
        name,
        "grid.method=[simclr]",
        "grid.label_fraction=[1.0]",
        "grid.class_weight=[none]",
        "grid.finetune=[frozen]",
        "pretrain.epochs=3",
        "finetune.epochs=1",
        "slurm.aggregate.enabled=false",
    )
    pretrain = next(r for r in records if r["stage"] == "pretrain")
    try:
        wait_for_checkpoint(multinode, root, pretrain)
        node = multinode.cluster.queue([pretrain["job_id"]])[pretrain["job_id"]]
        node_name = multinode.cluster.run("squeue", "-h", "-j", pretrain["job_id"], "-o", "%N").strip()
        assert node[0] == "RUNNING" and node_name in NODES
        killed_at = checkpoint_epoch(root / pretrain["key"] / "last.pt")
        multinode.kill_node(node_name)
        multinode.cluster.wait_gone([r["job_id"] for r in records], timeout=1500)
    finally:
        multinode.cluster.cancel([r["job_id"] for r in records])
        multinode.restart_nodes()
    rows = accounting(multinode, [pretrain["job_id"]], duplicates=True)
    attempts = [row for row in rows if row["JobID"] == pretrain["job_id"]]
    states = [row["State"] for row in attempts]
    assert "NODE_FAIL" in states and states[-1] == "COMPLETED", attempts
    assert attempts[-1]["NodeList"] not in ("", node_name), attempts  # resumed on the other node
    by_key = finished_runs_once(multinode, name, records, {"pretrain": 3, "finetune": 1})
    tags = by_key[pretrain["key"]].data.tags
    assert int(tags["resumed_after_epoch"]) >= killed_at >= 0, tags
    finetune = next(r for r in records if r["stage"] == "finetune")
    rows = {row["JobID"]: row for row in accounting(multinode, [finetune["job_id"]])}
    assert rows[finetune["job_id"]]["State"] == "COMPLETED", rows  # its dependent was not cancelled


def test_multinode_tracking_outage_is_waited_out(multinode):
    """The tracking server stops for five minutes (SSL_HPC_OUTAGE_S) while jobs log: they wait and retry,
    lose no metric, log none twice, and their dependents run."""
    outage_s = float(os.environ.get("SSL_HPC_OUTAGE_S", "300"))
    name = "multinode_tracking_outage"
    root, records, _ = submit(
        multinode,
        name,
        "grid.method=[simclr]",
        "grid.label_fraction=[1.0]",
        "grid.class_weight=[none]",
        "grid.finetune=[frozen]",
        "pretrain.epochs=3",
        "finetune.epochs=2",
        "slurm.aggregate.enabled=false",
    )
    pretrain = next(r for r in records if r["stage"] == "pretrain")
    try:
        wait_for_checkpoint(multinode, root, pretrain)
        multinode.server("stop")
        down_at = time.time()
        time.sleep(outage_s)
        assert multinode.cluster.queue([pretrain["job_id"]]), "the job gave up during the outage"
        multinode.server("start")
        multinode.cluster.wait_gone([r["job_id"] for r in records], timeout=1800)
    finally:
        multinode.server("start")
        multinode.cluster.cancel([r["job_id"] for r in records])
    assert time.time() - down_at >= outage_s
    finished_runs_once(multinode, name, records, {"pretrain": 3, "finetune": 2})
    rows = accounting(multinode, [r["job_id"] for r in records])
    assert {row["State"] for row in rows} == {"COMPLETED"}, rows


def test_multinode_interrupted_submit_queues_no_key_twice(multinode, tmp_path):
    """The sweep command dies between `sbatch` and writing its record (killed by the sbatch it ran, right
    after the jobs went in); the next run of the command finds them in Slurm's queue and queues none again."""
    name = "multinode_interrupted_submit"
    args = sweep_args(
        multinode,
        name,
        "grid.method=[supervised]",
        "grid.label_fraction=[1.0,0.25]",
        "grid.class_weight=[none]",
        "finetune.epochs=1",
        "slurm.aggregate.enabled=false",
        'slurm.extra_sbatch=["--hold"]',  # they stay queued until the test has looked (then it cancels them)
    )
    real_sbatch = shutil.which("sbatch")
    wrapper = tmp_path / "bin" / "sbatch"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/bash\n{real_sbatch} "$@"\nkill -KILL $PPID\nsleep 5\n')
    wrapper.chmod(0o755)
    died = run_sweep_cli(args, {**multinode.env, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}, timeout=600)
    assert died.returncode == -9, died.stdout + died.stderr
    root = multinode.shared / "outputs" / name
    assert not slurm_records(root)  # it died before recording anything
    user_jobs = multinode.cluster.run("squeue", "-h", "-r", "-o", "%i|%k").splitlines()
    queued_first = [line for line in user_jobs if f"ssl-hpc {name}" in line]
    try:
        assert len(queued_first) == 2, user_jobs
        again = run_sweep_cli(args, multinode.env, timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        records = slurm_records(root)
        queued = [
            line for line in multinode.cluster.run("squeue", "-h", "-r", "-o", "%i|%k").splitlines() if name in line
        ]
        assert sorted(queued) == sorted(queued_first), (queued_first, queued)  # nothing queued a second time
        assert sorted(r["job_id"] for r in records) == sorted(line.split("|")[0] for line in queued_first)
        assert len({r["key"] for r in records}) == 2
    finally:
        multinode.cluster.cancel([line.split("|")[0] for line in queued_first])


def test_multinode_two_checkouts_share_one_run_per_key(multinode):
    """Two output folders submit the same sweep to one tracking store at once: each key gets one run, and
    no job marks the other folder's live run KILLED."""
    name = "multinode_two_checkouts"
    base = [
        "grid.method=[supervised]",
        "grid.label_fraction=[1.0,0.25]",
        "grid.class_weight=[none]",
        "finetune.epochs=2",
        "slurm.aggregate.enabled=false",
    ]
    roots, records = [], []
    for folder in ("checkout_a", "checkout_b"):
        args = sweep_args(multinode, name, *base, f"output_dir={multinode.shared / folder}")
        result = run_sweep_cli(args, multinode.env, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        roots.append(multinode.shared / folder / name)
        records += slurm_records(roots[-1])
    try:
        multinode.cluster.wait_gone([r["job_id"] for r in records], timeout=1500)
    finally:
        multinode.cluster.cancel([r["job_id"] for r in records])
    client = MlflowClient(multinode.tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert not [run for run in runs if run.info.status == "KILLED"], [run.data.tags for run in runs]
    finished_runs_once(multinode, name, records, {"finetune": 2})
