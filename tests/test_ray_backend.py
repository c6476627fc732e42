"""``--backend ray`` on a private local Ray instance gives the same runs as the local backend."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import run_sweep_cli

pytestmark = pytest.mark.e2e

SSL = "simclr"  # a method with a pretraining stage
# Tags that name where a run executed (or a store-specific id), not what it is.
PLACE_TAGS = {
    "ray_node_id",
    "output_dir",  # each backend writes its own output folder here
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "pretrain_run_id",
}  # the pretraining run's id differs from store to store; its key does not


def snapshot(tracking_uri: str) -> dict[str, dict]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("smoke")
    runs = client.search_runs([experiment.experiment_id], "tags.stage != 'aggregate'")  # tables, not training
    result = {}
    for run in runs:
        histories = {
            name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            for name in ("train_loss", "val_loss", "val_acc")
        }
        result[run.data.tags["key"]] = {
            "status": run.info.status,
            "start": run.info.start_time,
            "end": run.info.end_time,
            "name": run.info.run_name,
            "tags": {k: v for k, v in run.data.tags.items() if k not in PLACE_TAGS},
            "params": run.data.params,
            "metrics": run.data.metrics,
            "histories": histories,
            "artifacts": sorted(item.path for item in client.list_artifacts(run.info.run_id)),
        }
    return result


def test_ray_backend_produces_the_same_runs_as_the_local_backend(tmp_path, subset_root):
    """A pretraining job and its fine-tune job, on a stratified quarter of the real PneumoniaMNIST."""
    methods = f"[{SSL}]"
    args = [
        "sweeps/smoke.yaml",
        "--quiet",
        "--set",
        "finetune.epochs=1",
        "--set",
        "pretrain.epochs=1",
        "--set",
        "grid.label_fraction=[0.25]",
        "--set",
        "grid.class_weight=[none]",
        "--set",
        "grid.finetune=[frozen]",
        "--set",
        f"grid.method={methods}",
        "--set",
        "runtime.num_threads=1",
    ]
    expected = 2
    stores = {}
    for backend in ("local", "ray"):
        uri = f"sqlite:///{tmp_path / backend / 'mlflow.db'}"
        extra = ["--backend", backend, "--set", f"output_dir={tmp_path / backend / 'outputs'}"]
        if backend == "ray":
            extra += ["--set", "ray.num_cpus=2", "--set", "ray.cpus_per_job=1", "--set", "ray.gpus_per_job=0"]
        result = run_sweep_cli(
            [*args, *extra], {"MEDMNIST_ROOT": str(subset_root), "MLFLOW_TRACKING_URI": uri}, timeout=900
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"smoke: {expected} finished" in result.stdout, result.stdout
        stores[backend] = snapshot(uri)
    local, ray = stores["local"], stores["ray"]
    assert set(local) == set(ray) and len(local) == expected  # the same keys
    for run in ray.values():  # a fine-tune task started only once its pretraining task had finished
        pretrain_key = run["tags"].get("pretrain_key")
        if pretrain_key:
            assert run["start"] >= ray[pretrain_key]["end"]
    for key in local:
        assert ray[key]["status"] == local[key]["status"] == "FINISHED"
        for part in ("name", "tags", "params", "artifacts"):
            assert ray[key][part] == local[key][part], (key, part)
        assert set(ray[key]["metrics"]) == set(local[key]["metrics"])
        for name, history in local[key]["histories"].items():
            if local[key]["tags"]["stage"] == "pretrain" and name != "train_loss":
                continue
            assert [step for step, _ in ray[key]["histories"][name]] == [step for step, _ in history] == [0]
            # same seed, same data order, one thread: the same numbers
            assert [v for _, v in ray[key]["histories"][name]] == pytest.approx([v for _, v in history], rel=1e-4)
        for name, value in local[key]["metrics"].items():
            if "second" not in name and not name.endswith("_s"):  # timings differ, results do not
                assert ray[key]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (key, name)
