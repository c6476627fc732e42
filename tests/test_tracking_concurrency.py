"""Tracking under load: 8 processes log to one store at once and every metric of every process is there.

Local mode (a SQLite file) is safe for many writers on one machine: the store is created under a file lock
and every MLflow call is retried on "database is locked". Server mode (mlflow/serve.sh) is what jobs on
other nodes use; the same check runs against it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PROJECT_ROOT

WRITERS = 8
STEPS = 25
METRICS = ("train_loss", "val_loss", "val_acc")


def value(writer: int, step: int, metric: int) -> float:
    return writer * 1000 + step + metric / 10


def writer(tracking_uri: str, index: int, barrier) -> None:
    from ssl_hpc.tracking import SweepTracker

    barrier.wait()  # all at once, including the first use of the store
    tracker = SweepTracker(tracking_uri, "load")
    run_id = tracker.create_run(
        f"writer-{index}",
        {"key": f"writer-{index}", "stage": "finetune"},
        {f"param_{j}": str(j * index) for j in range(40)},
    )
    for step in range(STEPS):
        tracker.log_metrics(run_id, {name: value(index, step, m) for m, name in enumerate(METRICS)}, step=step)
        tracker.set_tags(run_id, {"last_step": str(step)})
    tracker.log_metrics(run_id, {"test_acc": index / 10})
    tracker.finish(run_id)


def run_writers(tracking_uri: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(WRITERS)
    processes = [spawn.Process(target=writer, args=(tracking_uri, index, barrier)) for index in range(WRITERS)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=900)
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert codes == [0] * WRITERS, codes


def assert_everything_logged(tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    assert sorted(run.data.tags["key"] for run in runs) == sorted(f"writer-{i}" for i in range(WRITERS))
    for run in runs:
        index = int(run.data.tags["key"].split("-")[1])
        assert run.info.status == "FINISHED"
        assert run.data.tags["last_step"] == str(STEPS - 1)
        assert len(run.data.params) == 40 and run.data.params["param_3"] == str(3 * index)
        assert run.data.metrics["test_acc"] == pytest.approx(index / 10)
        for m, name in enumerate(METRICS):
            history = sorted((point.step, point.value) for point in client.get_metric_history(run.info.run_id, name))
            # every step exactly once (a retried call never logs twice), with its value
            assert history == [(step, pytest.approx(value(index, step, m))) for step in range(STEPS)], (index, name)


def test_eight_processes_share_one_sqlite_store(tmp_path):
    database = tmp_path / "store" / "mlflow.db"
    tracking_uri = f"sqlite:///{database}"  # does not exist yet: the writers race to create it
    run_writers(tracking_uri)
    assert_everything_logged(tracking_uri)
    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_eight_processes_log_through_the_tracking_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_PORT": str(port),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'server.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "PYTHON": sys.executable,
    }
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        ["bash", str(PROJECT_ROOT / "mlflow" / "serve.sh"), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the tracking server did not answer within 180 s"
            time.sleep(0.5)
        tracking_uri = f"http://127.0.0.1:{port}"
        run_writers(tracking_uri)
        assert_everything_logged(tracking_uri)
    finally:
        # serve.sh execs mlflow, which started its workers in this group; a server that already died (the
        # assertion above says why) leaves no group, and that must not hide the assertion.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
    assert Path(tmp_path / "server.db").is_file()
