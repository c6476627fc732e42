"""What a person meets in the MLflow UI: run names told apart within the runs table's cut, and each run's
dataset as a dataset input (the Dataset column)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PROJECT_ROOT
from ssl_hpc.config import load_sweep, validate_sweep
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.runner import label_budget_short, run_name
from ssl_hpc.tracking import SweepTracker

UI_CUT = 22  # characters of a run name MLflow's runs table shows before its ellipsis


def names(jobs) -> list[str]:
    return [run_name(job) for job in jobs]


@pytest.mark.parametrize("sweep", ["smoke.yaml", "smoke_ssl.yaml", "rotation_mnist.yaml"])
def test_runs_of_a_sweep_are_told_apart_within_the_cut(sweep):
    shown = [name[:UI_CUT] for name in names(expand_jobs(load_sweep(PROJECT_ROOT / "sweeps" / sweep, [])))]
    assert len(set(shown)) == len(shown), shown


def test_names_lead_with_model_budget_weight_mode_seed_and_end_with_the_key():
    sweep = {
        "name": "names",
        "seeds": [0, 1],
        "grid": {
            "dataset": ["pneumoniamnist"],
            "method": ["supervised", "simclr"],
            "label_fraction": [1.0, 0.25],
            "class_weight": ["none", "inverse_count_complement"],
            "finetune": ["end_to_end", "frozen"],
        },
    }
    jobs = expand_jobs(validate_sweep(sweep, source="test"))
    by_key = {job.key: run_name(job) for job in jobs}
    assert len(set(name[:UI_CUT] for name in by_key.values())) == len(jobs)
    for key, name in by_key.items():
        assert name.endswith(f" {key}") and name.isascii()
    finetune = next(job for job in jobs if job.stage == "finetune" and job.config.method == "simclr")
    config = finetune.config
    expected = f"simclr {label_budget_short(config.label_fraction, None)} "
    assert run_name(finetune).startswith(expected)
    pretrain = next(job for job in jobs if job.stage == "pretrain")
    assert run_name(pretrain).startswith(f"simclr pretrain s{pretrain.config.seed} pneumoniamnist@28 ")
    assert any(name.startswith("sup 25% icc e2e s1 ") for name in by_key.values())
    assert any(name.startswith("simclr 100% frz s0 ") for name in by_key.values())
    assert label_budget_short(None, 10) == "10/cls" and label_budget_short(0.005, None) == "0.5%"


def test_the_dataset_is_a_dataset_input_with_its_fingerprint(tmp_path, data_root):
    cache = DatasetCache(data_root)
    digest = cache.fingerprint("pneumoniamnist", 28)
    assert len(digest) == 16 and digest == cache.fingerprint("pneumoniamnist", 28)
    assert cache.source("pneumoniamnist", 28) == str(data_root / "pneumoniamnist.npz")
    assert cache.source("pneumoniamnist", 64) == str(data_root / "pneumoniamnist_64.npz")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "inputs")
    run_id = tracker.create_run("r", {"key": "k"}, {})
    for _ in range(2):  # a resumed run logs it again: still one input
        tracker.log_dataset(run_id, "pneumoniamnist@28", digest, str(Path(data_root)), {"train": 1}, "training")
    inputs = MlflowClient(uri).get_run(run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("pneumoniamnist@28", digest)]
    assert inputs[0].tags[0].key == "mlflow.data.context" and inputs[0].tags[0].value == "training"
