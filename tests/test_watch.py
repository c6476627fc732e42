"""``--status --watch``: the compact table (pure functions), the redraw loop, and a real local sweep watched
until it ends."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace

import pytest
from mlflow.entities import Metric, RunData

from conftest import run_sweep_cli
from ssl_hpc.config import validate_sweep
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.status import JobStatus
from ssl_hpc.tracking import SweepTracker, ui_address
from ssl_hpc.watch import (
    CLEAR,
    INTERRUPTED,
    SEPARATOR,
    all_ended,
    compact_table,
    epochs_done,
    format_duration,
    frame,
    progress_text,
    ui_line,
    watch,
)

SWEEP = {
    "name": "watched",
    "grid": {
        "dataset": ["pneumoniamnist"],
        "method": ["supervised", "simclr"],
        "label_fraction": [1.0, 0.25],
        "class_weight": ["none"],
    },
    "pretrain": {"epochs": 20},
    "finetune": {"epochs": 10},
}


@pytest.fixture(scope="module")
def jobs():
    return expand_jobs(validate_sweep(SWEEP, source="test"))


def run_with_epochs(done: int, seconds: float) -> SimpleNamespace:
    """What a search returns for a run that logged ``done`` epochs: each metric's latest value and step."""
    metrics = [Metric("epoch_seconds", seconds, 0, done - 1), Metric("train_loss", 0.5, 0, done - 1)]
    return SimpleNamespace(data=RunData(metrics=metrics))


def test_epochs_and_eta_come_from_the_last_epoch_seconds_and_the_stage_epochs(jobs):
    finetune = next(job for job in jobs if job.stage == "finetune")
    pretrain = next(job for job in jobs if job.stage == "pretrain")
    assert epochs_done(None) is None
    assert epochs_done(run_with_epochs(3, 12.5)) == (3, 12.5)
    assert progress_text(finetune, None) == "epoch 0/10"
    assert progress_text(finetune, run_with_epochs(4, 10.0)) == "epoch 4/10  ETA 1:00"
    assert progress_text(pretrain, run_with_epochs(2, 200.0)) == "epoch 2/20  ETA 1:00:00"
    assert format_duration(75) == "1:15" and format_duration(3725) == "1:02:05" and format_duration(-3) == "0:00"


def test_compact_table_counts_per_stage_and_lists_running_and_failed_jobs(jobs):
    pretrain = [job for job in jobs if job.stage == "pretrain"]
    finetune = [job for job in jobs if job.stage == "finetune"]
    rows = [
        JobStatus(pretrain[0], "running", "slurm 17 RUNNING on node3", "r1"),
        *(JobStatus(job, "pending") for job in finetune[:2]),
        JobStatus(finetune[2], "finished"),
        JobStatus(finetune[3], "failed", "slurm 18 OOM; CUDA out of memory"),
    ]
    runs = {pretrain[0].key: run_with_epochs(5, 30.0)}
    table = compact_table(rows, runs, "watched 12:00:00", "MLflow UI: http://x/#/experiments/1/runs")
    lines = table.splitlines()
    assert lines[0] == "watched 12:00:00"
    assert lines[1].split() == ["stage", "pending", "running", "finished", "failed"]
    assert lines[2].split() == ["pretrain", "0", "1", "0", "0"]
    assert lines[3].split() == ["finetune", "2", "0", "1", "1"]
    assert "running (1):" in lines
    running = next(line for line in lines if pretrain[0].key in line)
    assert "simclr pretrain s" in running and "epoch 5/20  ETA 7:30" in running and "on node3" in running
    assert "failed (1):" in lines
    failed = next(line for line in lines if finetune[3].key in line)
    assert "OOM; CUDA out of memory" in failed
    assert lines[-1].startswith("MLflow UI:") and "every job has ended" not in table
    assert not all_ended(rows)
    assert all_ended([JobStatus(job, "finished") for job in finetune] + [JobStatus(pretrain[0], "failed")])


def test_long_lists_are_cut_and_counted(jobs):
    job = jobs[-1]
    table = compact_table([JobStatus(job, "failed", f"reason {i}") for i in range(25)], {}, "h")
    assert "failed (25):" in table and "... and 5 more" in table and table.count("reason ") == 20


def test_frames_clear_a_terminal_and_separate_in_a_log():
    assert frame("table", tty=True) == f"{CLEAR}table\n"
    assert frame("table", tty=False) == f"{SEPARATOR}\ntable\n"


def test_watch_redraws_until_nothing_is_pending_or_running(jobs):
    job = jobs[0]
    states = iter(["pending", "running", "running", "finished"])
    out, sleeps = io.StringIO(), []
    code = watch(lambda: ([JobStatus(job, next(states))], {}), 2, "watched", out, tty=False, sleep=sleeps.append)
    assert code == 0
    assert out.getvalue().count(SEPARATOR) == 4 and sleeps == [2, 2, 2]
    assert "every job has ended" in out.getvalue().split(SEPARATOR)[-1]


def test_ctrl_c_stops_watching_with_130(jobs):
    def interrupted(_seconds: float) -> None:
        raise KeyboardInterrupt

    out = io.StringIO()
    code = watch(lambda: ([JobStatus(jobs[0], "running")], {}), 1, "w", out, tty=True, sleep=interrupted)
    assert code == INTERRUPTED == 130
    assert out.getvalue().startswith(CLEAR) and "stopped watching" in out.getvalue()


def test_ui_address_of_a_server_and_of_a_file_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_PORT", raising=False)
    assert ui_address("http://10.0.0.5:5000/", "7") == ("http://10.0.0.5:5000/#/experiments/7/runs", "")
    address, hint = ui_address(f"sqlite:///{tmp_path}/store/mlflow.db", "3", environ={})
    assert address == "http://127.0.0.1:5000/#/experiments/3/runs"
    assert f"MLFLOW_BACKEND_STORE_URI=sqlite:///{tmp_path}/store/mlflow.db" in hint and "mlflow/serve.sh" in hint
    address, _ = ui_address(f"sqlite:///{tmp_path}/mlflow.db", "3", environ={"MLFLOW_PORT": "5050"})
    assert address == "http://127.0.0.1:5050/#/experiments/3/runs"
    assert "no experiment 'x' yet" in ui_line(f"sqlite:///{tmp_path}/absent.db", "x")
    tracker = SweepTracker(f"sqlite:///{tmp_path}/mlflow.db", "x")
    line = ui_line(tracker.tracking_uri, "x", tracker)
    assert line.startswith(f"MLflow UI: http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs  (start")


def test_watch_needs_status(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: w\ngrid: {dataset: [pneumoniamnist], method: [supervised]}\n")
    result = run_sweep_cli([str(sweep), "--watch", "5"], {})
    assert result.returncode == 2 and "--watch" in result.stderr and "--status" in result.stderr


@pytest.mark.e2e
def test_watching_a_running_local_sweep_redraws_until_it_ends(tmp_path, data_root, tracking_uri):
    env = {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri}
    args = [
        "sweeps/smoke.yaml",
        *("--set", f"output_dir={tmp_path / 'outputs'}", "--set", f"results_dir={tmp_path / 'results'}"),
        *("--set", "name=watch", "--set", "grid.class_weight=[none]", "--set", "grid.label_fraction=[0.1,0.05]"),
        *("--set", "finetune.epochs=2", "--set", "cam.enabled=false"),
    ]
    sweep = run_sweep_cli(args, env, wait=False)
    try:
        started = time.monotonic()
        watched = run_sweep_cli([*args, "--status", "--watch", "1"], env, timeout=600)
        assert watched.returncode == 0, watched.stdout[-3000:] + watched.stderr[-3000:]
        frames = watched.stdout.split(SEPARATOR)[1:]
        assert len(frames) >= 2, watched.stdout
        assert "every job has ended" in frames[-1] and "every job has ended" not in frames[0]
        assert frames[-1].splitlines()[3].split() == ["finetune", "0", "0", "2", "0"], frames[-1]
        assert any("running (" in text and "epoch " in text for text in frames), watched.stdout
        assert "MLflow UI: http://127.0.0.1:" in frames[-1] and "#/experiments/" in frames[-1]
        output = sweep.communicate(timeout=600)[0]
        assert sweep.returncode == 0, output[-3000:]
        assert "MLflow UI: http://127.0.0.1:" in output and "/runs" in output
        assert time.monotonic() - started < 600
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()


def test_each_refresh_of_a_slurm_sweep_asks_slurm_once_and_mlflow_once(jobs, tmp_path, monkeypatch):
    """However many jobs: one squeue, at most one sacct and one MLflow search per refresh, none per job."""
    import ssl_hpc.launchers.slurm.status as slurm_status
    from ssl_hpc.launchers.slurm import QueueEntry, Submission, append_records
    from ssl_hpc.watch import Collector

    output_root = tmp_path / "outputs" / "watched"
    records = [Submission(job.key, f"100_{i}", "100", i, job.stage) for i, job in enumerate(jobs)]
    append_records(output_root, records)
    calls = {"squeue": 0, "sacct": 0, "search": 0}

    def squeue(job_ids):
        calls["squeue"] += 1
        return {"100_0": QueueEntry("100_0", "RUNNING", "None", "node1")}

    def sacct(job_ids):
        calls["sacct"] += 1
        return {}

    monkeypatch.setattr(slurm_status, "squeue", squeue)
    monkeypatch.setattr(slurm_status, "sacct", sacct)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "watched")
    search = tracker.search

    def counted(*args, **kwargs):
        calls["search"] += 1
        return search(*args, **kwargs)

    collect = Collector(jobs, uri, "watched", output_root)
    collect.tracker = tracker
    monkeypatch.setattr(tracker, "search", counted)
    for refresh in (1, 2):
        rows, _ = collect()
        assert calls == {"squeue": refresh, "sacct": refresh, "search": refresh}
    assert [row.state for row in rows].count("running") == 1 and "on node1" in rows[0].detail
