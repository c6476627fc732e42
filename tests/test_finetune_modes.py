"""Fine-tuning modes train exactly what they name."""

from __future__ import annotations

import pytest
import torch

from ssl_hpc.config import DataSettings, FinetuneSettings, ModelSettings, RunConfig
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.models.factory import build_classifier
from ssl_hpc.train.finetune import ClassificationTask, configure_trainable, count_trainable
from ssl_hpc.train.loop import Precision, fit


def config(mode: str, trainable_last: int = 1) -> RunConfig:
    return RunConfig(
        stage="finetune",
        method="supervised",
        dataset="pneumoniamnist",
        size=28,
        backbone="resnet18",
        seed=0,
        model=ModelSettings(stem="small"),
        data=DataSettings(),
        finetune=mode,
        label_fraction=1.0,
        class_weight="none",
        finetune_settings=FinetuneSettings(epochs=1, batch_size=16, lr=0.1, trainable_last=trainable_last),
    )


def images(n: int = 48) -> ImageSplit:
    generator = torch.Generator().manual_seed(0)
    return ImageSplit(
        torch.randint(0, 256, (n, 1, 28, 28), generator=generator, dtype=torch.uint8),
        torch.randint(0, 2, (n,), generator=generator),
    )


def train(mode: str, tmp_path, trainable_last: int = 1):
    torch.manual_seed(0)
    run = config(mode, trainable_last)
    model = build_classifier(run, num_classes=2, dataset_channels=1)
    opened = configure_trainable(model, mode, trainable_last)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    task = ClassificationTask(model, opened, images(16))
    fit(task, images(), run.finetune_settings, seed=0, workdir=tmp_path, precision=Precision(torch.device("cpu")))
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    return model, changed


def test_frozen_leaves_every_backbone_tensor_bit_identical(tmp_path):
    model, changed = train("frozen", tmp_path)
    backbone_changed = {name for name in changed if name.startswith("backbone.")}
    assert backbone_changed == set()  # weights *and* BatchNorm running statistics
    assert any(name.startswith("head.") for name in changed)
    assert count_trainable(model) == sum(p.numel() for p in model.head.parameters())


def test_end_to_end_changes_backbone_weights_and_batchnorm_statistics(tmp_path):
    _, changed = train("end_to_end", tmp_path)
    assert "backbone.body.conv1.weight" in changed
    assert "backbone.body.bn1.running_mean" in changed
    assert "backbone.body.layer1.0.conv1.weight" in changed


@pytest.mark.parametrize("last", [1, 2])
def test_partial_opens_only_the_last_stages(tmp_path, last):
    _, changed = train("partial", tmp_path, trainable_last=last)
    opened = ["layer4", "layer3"][:last]
    backbone_changed = {name for name in changed if name.startswith("backbone.")}
    assert backbone_changed
    assert all(any(name.startswith(f"backbone.body.{stage}.") for stage in opened) for name in backbone_changed)
    assert not any(name.startswith("backbone.body.layer1.") for name in changed)


def test_partial_with_too_many_stages_is_refused():
    model = build_classifier(config("partial"), num_classes=2, dataset_channels=1)
    with pytest.raises(ValueError, match="4 stages"):
        configure_trainable(model, "partial", 5)


def train_with_policy(tmp_path, backbone: str, **policy):
    torch.manual_seed(0)
    run = config("partial").model_copy(update={"backbone": backbone})
    model = build_classifier(run, num_classes=2, dataset_channels=1)
    opened = configure_trainable(model, "partial", **policy)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    settings = run.finetune_settings.model_copy(update={"optimizer": "adam", "lr": 1e-2})
    fit(
        ClassificationTask(model, opened, images(16)),
        images(),
        settings,
        seed=0,
        workdir=tmp_path,
        precision=Precision(torch.device("cpu")),
    )
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(before[name], tensor)}
    return opened, {name[len("backbone.body.") :] for name in changed if name.startswith("backbone.")}


def test_trainable_from_a_named_module_trains_exactly_from_there(tmp_path):
    opened, changed = train_with_policy(tmp_path, "resnet18", trainable_from="layer4.1")
    assert changed and all(name.startswith("layer4.1.") for name in changed)
    assert {name.rsplit(".", 1)[0] for name in changed if name.endswith("weight")} == set(opened)


def test_trainable_layers_counts_layers_with_weights_from_the_end(tmp_path):
    opened, changed = train_with_policy(tmp_path, "cnn10", trainable_layers=3)
    assert opened == ["4.1", "4.3", "4.4"]  # BatchNorm, conv, BatchNorm: the last three layers with weights
    assert {name.rsplit(".", 1)[0] for name in changed} == set(opened)


def test_vgg19_opened_from_block5_conv4():
    run = config("partial").model_copy(update={"backbone": "vgg19", "size": 32})
    model = build_classifier(run, num_classes=2, dataset_channels=1)
    opened = configure_trainable(model, "partial", trainable_from="features.34")
    trainable = {name for name, p in model.backbone.body.named_parameters() if p.requires_grad}
    assert opened[0] == "features.34"
    assert "features.34.weight" in trainable and "features.32.weight" not in trainable
    assert all(not name.startswith("features.") or name.startswith("features.34.") for name in trainable)


def test_unknown_module_name_is_refused_with_examples():
    model = build_classifier(config("partial"), num_classes=2, dataset_channels=1)
    with pytest.raises(ValueError, match="no module 'layer9'"):
        configure_trainable(model, "partial", trainable_from="layer9")


def test_knn_needs_no_optimiser_and_trains_nothing(tmp_path, data_root, sweep_here, monkeypatch):
    """A k-NN fine-tune job on real PneumoniaMNIST with every optimiser made to fail: it still finishes."""
    import yaml
    from mlflow import MlflowClient

    def no_optimiser(*args, **kwargs):
        raise AssertionError("k-NN must not build an optimiser")

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", no_optimiser)
    sweep = tmp_path / "knn.yaml"
    sweep.write_text(
        yaml.safe_dump(
            {
                "name": "knn",
                "grid": {
                    "dataset": ["pneumoniamnist"],
                    "method": ["random_init"],
                    "finetune": ["knn"],
                    "label_fraction": [0.25],
                },
                "cam": {"enabled": False},
                "output_dir": str(tmp_path / "outputs"),
                "results_dir": str(tmp_path / "results"),
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, out = sweep_here([str(sweep), "--quiet"], {"MEDMNIST_ROOT": str(data_root), "MLFLOW_TRACKING_URI": uri})
    assert code == 0, out
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("knn").experiment_id], "tags.stage = 'finetune'")
    assert run.info.status == "FINISHED" and run.data.tags["trainable_params"] == "0"
    assert 0.5 < run.data.metrics["test_auc"] <= 1.0  # a vote on random features still beats chance here
    assert client.get_metric_history(run.info.run_id, "train_loss") == []  # no epoch was trained
