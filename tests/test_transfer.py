"""Transfer learning on image folders: pretrained weights, their absence, the leakage guard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from ssl_hpc.cli import sweep_main
from ssl_hpc.files import load_checkpoint
from ssl_hpc.models.backbones import BackboneRequest, build_backbone
from test_image_folder import COVID_CLASSES, make_class_folders, make_split_folders

SIZE = 28


def write_sweep(tmp_path: Path, dataset: dict, **sections) -> Path:
    sweep = {
        "name": "transfer",
        "output_dir": str(tmp_path / "outputs"),
        "data_root": str(tmp_path / "data"),
        "datasets": {"cxr": dataset},
        "grid": {
            "dataset": ["cxr"],
            "size": [SIZE],
            "method": ["imagenet"],
            "backbone": ["resnet18"],
            "finetune": ["frozen"],
        },
        "finetune": {"epochs": 1, "batch_size": 16, "optimizer": "adam", "lr": 1e-3},
        "runtime": {"keep_checkpoints": False},
    }
    for name, value in sections.items():
        sweep[name] = {**sweep.get(name, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def only_run(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("transfer")
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'finetune'")
    assert len(runs) == 1
    return client, runs[0]


def test_run_starts_from_the_given_weights_file_and_names_its_classes(tmp_path, store):
    make_class_folders(tmp_path / "data" / "covid")
    torch.manual_seed(7)
    donor = build_backbone("resnet18", BackboneRequest(3, SIZE))
    with torch.no_grad():
        for tensor in donor.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.01)  # not what any fresh initialisation gives
    weights = tmp_path / "donor.pt"
    torch.save(donor.state_dict(), weights)
    sweep = write_sweep(
        tmp_path,
        {"root": "covid", "images_subdir": "images", "masks_subdir": "masks"},
        model={"pretrained_weights": str(weights)},
    )
    assert sweep_main([str(sweep), "--quiet"], project_root=tmp_path) == 0
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    model = load_checkpoint(client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "dl")))
    for name, tensor in donor.state_dict().items():  # frozen: the backbone is still exactly the file's
        assert torch.equal(model[f"backbone.{name}"], tensor), name
    matrix = pd.read_csv(
        client.download_artifacts(run.info.run_id, "confusion_matrix.csv", str(tmp_path / "dl")), index_col=0
    )
    assert list(matrix.index) == sorted(COVID_CLASSES) and list(matrix.columns) == sorted(COVID_CLASSES)
    assert json.loads(run.data.tags["class_names"]) == sorted(COVID_CLASSES)
    cams = {item.path for item in client.list_artifacts(run.info.run_id, "cam")}
    assert any(path.endswith(".png") and "cam_class" in path for path in cams), cams
    # the folder's lung masks give localization scores
    for score in ("energy_inside", "magtr", "mangtr", "road_morf"):
        assert f"cam_gradcampp_{score}" in run.data.metrics, score


def test_missing_imagenet_weights_stop_the_sweep_with_instructions(tmp_path, store, monkeypatch, capsys):
    make_class_folders(tmp_path / "data" / "covid", masks=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sweep = write_sweep(tmp_path, {"root": "covid", "images_subdir": "images"})
    assert sweep_main([str(sweep), "--quiet"], project_root=tmp_path) == 2
    error = capsys.readouterr().err
    assert "resnet18" in error and "timm.create_model('resnet18.tv_in1k', pretrained=True)" in error
    assert "model.pretrained_weights" in error
    assert not (tmp_path / "store").exists() and not (tmp_path / "outputs").exists()


def planted_duplicate(tmp_path: Path) -> Path:
    root = make_split_folders(
        tmp_path / "data" / "xray",
        {
            "train": {"NORMAL": 12, "PNEUMONIA": 12},
            "val": {"NORMAL": 4, "PNEUMONIA": 4},
            "test": {"NORMAL": 6, "PNEUMONIA": 6},
        },
    )
    shutil.copy(root / "train" / "NORMAL" / "NORMAL-train-3.jpeg", root / "test" / "NORMAL" / "copy.jpeg")
    return root


def test_leakage_is_logged_in_report_mode(tmp_path, store):
    planted_duplicate(tmp_path)
    sweep = write_sweep(tmp_path, {"root": "xray"}, grid={"method": ["supervised"], "backbone": ["small_cnn"]})
    assert sweep_main([str(sweep), "--quiet"], project_root=tmp_path) == 0
    client, run = only_run(store)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["duplicates_train_test"] == 1
    assert run.data.metrics["duplicates_train_val"] == 0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "leakage")} >= {
        "leakage/duplicates.csv",
        "leakage/duplicate_pairs.csv",
    }


def test_leakage_error_mode_stops_the_run_before_training(tmp_path, store):
    planted_duplicate(tmp_path)
    sweep = write_sweep(
        tmp_path,
        {"root": "xray"},
        grid={"method": ["supervised"], "backbone": ["small_cnn"]},
        data={"duplicates": "error"},
    )
    assert sweep_main([str(sweep), "--quiet"], project_root=tmp_path) == 1
    client, run = only_run(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["error_type"] == "LeakageError"
    assert client.get_metric_history(run.info.run_id, "train_loss") == []
