"""``launch/tune.py``: 4 trials with ASHA on a local Ray instance, each an MLflow run with the sweep's conventions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import PROJECT_ROOT

pytestmark = pytest.mark.e2e

TAGS = ("sweep", "key", "stage", "method", "backbone", "dataset", "label_fraction", "class_weight", "finetune", "seed")


def run_tune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "launch" / "tune.py"), *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def test_tune_runs_four_trials_with_asha_each_an_mlflow_run(tmp_path, data_root, tracking_uri):
    args = [
        "sweeps/tune_smoke.yaml",
        "--set",
        f"output_dir={tmp_path / 'outputs'}",
        "--set",
        "finetune.epochs=2",
        "--set",
        "tune.scheduler.asha.max_t=2",
        "--set",
        "grid.label_fraction=[0.1]",
    ]
    result = run_tune(args, {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": tracking_uri})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "tune_smoke: 4 trials" in result.stdout, result.stdout[-2000:]

    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("tune_smoke").experiment_id])
    assert len(runs) == 4
    assert len({run.data.tags["key"] for run in runs}) == 4
    assert len({run.data.tags["tune_trial_id"] for run in runs}) == 4
    for run in runs:
        tags = run.data.tags
        assert all(tags.get(tag) for tag in TAGS), tags
        assert tags["sweep"] == "tune_smoke" and tags["stage"] == "finetune"
        params = json.loads(tags["tune_params"])
        assert set(params) == {"finetune.lr", "finetune.optimizer"}
        assert float(run.data.params["finetune_settings.lr"]) == pytest.approx(params["finetune.lr"])
        assert run.data.params["finetune_settings.optimizer"] == params["finetune.optimizer"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(len(steps))) and 1 <= len(steps) <= 2  # every reported epoch, once
        if run.info.status == "FINISHED":
            assert steps == [0, 1] and "test_acc" in run.data.metrics
        else:  # stopped early by ASHA
            assert run.info.status == "KILLED" and tags["tune_stopped"] == "early", (run.info.status, tags)


def test_trials_stopped_by_the_scheduler_end_killed_and_tagged(tracking_uri):
    from ssl_hpc.tracking import SweepTracker
    from ssl_hpc.tune import finalize_stopped

    tracker = SweepTracker(tracking_uri, "tune_finalize")
    ids = {}
    for key in ("running", "interrupted", "failed", "finished"):
        ids[key] = tracker.create_run(key, {"key": key}, {})
        tracker.log_metrics(ids[key], {"train_loss": 1.0}, step=0)
    tracker.set_tags(ids["interrupted"], {"error": "Traceback...\nSystemExit", "error_type": "SystemExit"})
    tracker.finish(ids["interrupted"], "KILLED")
    tracker.set_tags(ids["failed"], {"error": "Traceback...\nValueError: bad", "error_type": "ValueError"})
    tracker.finish(ids["failed"], "FAILED")
    tracker.finish(ids["finished"], "FINISHED")
    statuses = finalize_stopped(
        tracker,
        {
            "t0": ("running", False),
            "t1": ("interrupted", False),
            "t2": ("failed", True),
            "t3": ("finished", False),
            "t4": ("never_opened", True),
        },
    )
    assert statuses == {
        "running": "KILLED",
        "interrupted": "KILLED",
        "failed": "FAILED",
        "finished": "FINISHED",
        "never_opened": "FAILED (no MLflow run)",
    }  # counted, so launch/tune.py exits non-zero
    for key in ("running", "interrupted"):
        run = tracker.run_for_key(key)
        assert run.info.status == "KILLED" and run.data.tags["tune_stopped"] == "early"
        assert run.data.tags["stopped_after_epoch"] == "0" and "error" not in run.data.tags
    assert tracker.run_for_key("failed").data.tags["error_type"] == "ValueError"
    assert "tune_stopped" not in tracker.run_for_key("finished").data.tags
