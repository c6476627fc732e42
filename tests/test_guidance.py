"""CAM-guided fine-tuning: the loss formulas, the gradient reaching the map, the config's refusals, the
run key, gradient accumulation, and one fine-tune run end to end on an image folder with masks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from mlflow import MlflowClient

from ssl_hpc.cli import sweep_main
from ssl_hpc.config import ConfigError, GuidanceSettings, validate_sweep
from ssl_hpc.config.stages import StageSettings
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.explain.in_graph import CamInGraph, region_means, scale_maps
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.train.finetune import configure_trainable
from ssl_hpc.train.guidance import (
    GuidedClassificationTask,
    guidance_target,
    guided_loss,
    guided_train_split,
    pack_masks,
)
from ssl_hpc.train.loop import Precision, fit
from test_cam_explain import tiny_classifier
from test_config import base
from test_image_folder import make_class_folders

# ----------------------------------------------------------------------------------------------- formulas

CE = torch.tensor([2.0, 0.5, 1.0, 3.0])
MAGTR = torch.tensor([0.25, 0.8, 0.0, 0.5])
MANGTR = torch.tensor([0.5, 0.1, 0.3, 0.9])
HAS_MASK = torch.tensor([True, True, True, False])  # the last image has no mask: its CE only


def test_guidance_product_loss_is_ce_times_one_minus_magtr():
    loss = guided_loss(GuidanceSettings(loss="product"), CE, MAGTR, MANGTR, HAS_MASK)
    assert torch.allclose(loss, torch.tensor([2.0 * 0.75, 0.5 * 0.2, 1.0 * 1.0, 3.0]))


def test_guidance_division_loss_is_ce_over_magtr_guarded_by_epsilon():
    settings = GuidanceSettings(loss="division")
    assert settings.epsilon == 0.01  # the documented default
    loss = guided_loss(settings, CE, MAGTR, MANGTR, HAS_MASK)
    assert torch.allclose(loss, torch.tensor([2.0 / 0.26, 0.5 / 0.81, 1.0 / 0.01, 3.0]))  # a blank map: 100 x CE
    assert torch.isfinite(loss).all()


def test_guidance_weighted_sum_loss_uses_k1_k2_k3():
    settings = GuidanceSettings(loss="weighted_sum", k1=1.0, k2=2.0, k3=0.5)
    loss = guided_loss(settings, CE, MAGTR, MANGTR, HAS_MASK)
    expected = [1.0 * c + 2.0 * (1 - m) + 0.5 * n for c, m, n in zip(CE.tolist(), MAGTR.tolist(), MANGTR.tolist())]
    expected[3] = 3.0
    assert torch.allclose(loss, torch.tensor(expected))
    assert GuidanceSettings(loss="weighted_sum").model_dump()["k1"] == 1.0  # defaults 1, 1, 1


def test_guidance_region_means_match_the_explain_scores():
    from ssl_hpc.explain.localization import magtr, mangtr

    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 2:5, 2:6] = True
    masks[2] = True  # the whole image: no MANGTR
    inside, outside, has_mask, has_outside = region_means(maps, masks)
    assert has_mask.tolist() == [True, False, True] and has_outside.tolist() == [True, True, False]
    assert math.isclose(inside[0].item(), magtr(maps.numpy(), masks.numpy())[0], rel_tol=1e-5)
    assert math.isclose(outside[1].item(), mangtr(maps.numpy(), masks.numpy())[1], rel_tol=1e-5)
    scaled = scale_maps(torch.rand(2, 4, 4) * 5, (8, 8))
    assert scaled.shape == (2, 8, 8) and scaled.amin() >= 0 and torch.allclose(scaled.amax(dim=(1, 2)), torch.ones(2))


# ------------------------------------------------------------------------------- the gradient reaches the map


def toy_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28], labels, masks: a grey square region (the mask, somewhere in the left
    half) holds a bright spot in class 1 only; a marker outside every mask (a bar in the right half, high for
    class 0, low for class 1) tells the class too, so plain CE may look at either."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 1, 28, 28, generator=generator) * 40
    labels = torch.arange(count) % 2
    masks = torch.zeros(count, 1, 28, 28, dtype=torch.uint8)
    for index in range(count):
        y, x = torch.randint(0, 17, (2,), generator=generator).tolist()
        x = min(x, 6)
        masks[index, 0, y : y + 10, x : x + 10] = 1
        images[index, 0, y : y + 10, x : x + 10] += 80
        if labels[index] == 1:
            images[index, 0, y + 3 : y + 7, x + 3 : x + 7] += 120
        top = 2 if labels[index] == 0 else 16
        images[index, 0, top : top + 10, 21:26] += 180  # the marker
    return images.clamp(0, 255).to(torch.uint8), labels, masks


def train_magtr(guidance: GuidanceSettings | None, steps: int = 40) -> tuple[float, float]:
    """MAGTR of the true class's Grad-CAM on held-out toy images, before and after ``steps`` Adam steps."""
    images, labels, masks = toy_data(64, seed=1)
    test_images, test_labels, test_masks = toy_data(64, seed=2)
    model = tiny_classifier(num_classes=2)
    val = ImageSplit(test_images, test_labels)
    settings = guidance or GuidanceSettings(loss="product")
    task = GuidedClassificationTask(model, ["*"], val, test_masks, settings, eval_batch_size=64)
    before = task._val_localization()["val_magtr"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    packed = pack_masks(ImageSplit(images, labels), masks)
    for step in range(steps):
        batch = torch.arange(32) + 32 * (step % 2)
        model.train()
        if guidance is None:
            loss = F.cross_entropy(model(packed.images[batch, :1].float() / 255), labels[batch])
        else:
            loss = task.loss(packed.images[batch], labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, task._val_localization()["val_magtr"]


def test_guidance_gradient_moves_the_cam_into_the_mask():
    torch.set_num_threads(1)
    start, plain = train_magtr(None)
    start_guided, guided = train_magtr(GuidanceSettings(loss="weighted_sum", k1=1.0, k2=2.0, k3=2.0))
    assert start == start_guided
    # the guided term's gradient reaches the map: MAGTR rises well beyond what cross-entropy alone does
    assert guided > start + 0.1, (start, guided)
    assert guided > plain + 0.1, (plain, guided)


def test_guidance_gradcam_flows_into_the_weights_and_faster_scorecam_through_activations_only():
    images, labels, _ = toy_data(4, seed=3)
    batch = images.float() / 255
    for kind in ("gradcam", "faster_scorecam"):
        model = tiny_classifier(num_classes=2)
        cams = CamInGraph(model, guidance_target(model, images[:1], None))
        with cams.capture():
            logits = model(batch)
        maps = cams.gradcam(logits, labels) if kind == "gradcam" else cams.faster_scorecam(batch, labels, 4)
        maps.sum().backward()
        head = model.head.weight.grad
        # Grad-CAM's channel weights are the head's weights: with create_graph they get a gradient; Score-CAM's
        # come from forward passes without one, so the head (after the CAM layer) gets none
        assert (head is not None and head.abs().sum() > 0) == (kind == "gradcam"), kind
        assert model.backbone.body[0].weight.grad.abs().sum() > 0, kind  # through the activations


def test_guidance_task_steps_a_frozen_backbones_head_and_runs_faster_scorecam():
    images, labels, masks = toy_data(8, seed=4)
    packed = pack_masks(ImageSplit(images, labels), masks)
    cases = [("frozen", GuidanceSettings(loss="product"))]
    cases.append(("end_to_end", GuidanceSettings(loss="division", map="faster_scorecam", max_channels=4)))
    for mode, settings in cases:
        model = tiny_classifier(num_classes=2)
        opened = configure_trainable(model, mode)
        task = GuidedClassificationTask(model, opened, ImageSplit(images, labels), masks, settings)
        task.set_train_mode()
        task.loss(packed.images, labels).backward()
        assert model.head.weight.grad.abs().sum() > 0, mode
        assert all(p.grad is None for p in model.backbone.parameters()) == (mode == "frozen"), mode
        metrics = task.validate()
        for name in ("train_ce", "train_magtr", "train_mangtr", "val_magtr", "val_mangtr", "val_acc"):
            assert math.isfinite(metrics[name]), (mode, name)


# --------------------------------------------------------------------------------------------------- config


def test_guidance_config_refuses_settings_of_another_loss_or_map_naming_the_field():
    with pytest.raises(ConfigError, match=r"finetune\.guidance\.k2.*only read by loss: weighted_sum"):
        validate_sweep(base(finetune__guidance={"loss": "product", "k2": 1.0}))
    with pytest.raises(ConfigError, match=r"finetune\.guidance\.epsilon.*only read by loss: division"):
        validate_sweep(base(finetune__guidance={"loss": "weighted_sum", "epsilon": 0.1}))
    with pytest.raises(ConfigError, match=r"finetune\.guidance\.max_channels.*map: faster_scorecam"):
        validate_sweep(base(finetune__guidance={"loss": "product", "max_channels": 8}))
    with pytest.raises(ConfigError, match=r"finetune\.guidance\.loss.*'product', 'division' or 'weighted_sum'"):
        validate_sweep(base(finetune__guidance={"loss": "ratio"}))
    with pytest.raises(ConfigError, match=r"finetune\.guidance\.map.*'gradcam' or 'faster_scorecam'"):
        validate_sweep(base(finetune__guidance={"loss": "product", "map": "scorecam"}))
    with pytest.raises(ConfigError, match=r"finetune\.accumulate_steps"):
        validate_sweep(base(finetune__accumulate_steps=0))


def test_guidance_config_refuses_datasets_without_masks():
    with pytest.raises(ConfigError, match=r"finetune\.guidance.*'pneumoniamnist' is a MedMNIST dataset.*masks_subdir"):
        validate_sweep(base(finetune__guidance={"loss": "product"}))
    folders = {"cxr": {"root": "cxr", "images_subdir": "images"}}
    raw = base(grid__dataset=["cxr"], methods={"supervised": {"finetune": {"guidance": {"loss": "division"}}}})
    with pytest.raises(ConfigError, match=r"methods\.supervised\.finetune\.guidance.*image folder without masks"):
        validate_sweep({**raw, "datasets": folders})
    folders["cxr"]["masks_subdir"] = "masks"
    sweep = validate_sweep({**base(grid__dataset=["cxr"], finetune__guidance={"loss": "product"}), "datasets": folders})
    assert sweep.finetune.guidance.map == "gradcam" and sweep.finetune.guidance.max_channels is None


def test_guidance_before_training_refuses_a_dataset_without_train_masks():
    split = ImageSplit(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))
    dataset = LabeledDataset("plain", split, split, split, ("a", "b"))
    with pytest.raises(ValueError, match="finetune.guidance needs a mask per training image.*'plain'"):
        guided_train_split(dataset)


def test_guidance_and_accumulate_steps_enter_the_run_key_only_when_set():
    folders = {"cxr": {"root": "cxr", "images_subdir": "images", "masks_subdir": "masks"}}

    def keys(**changes) -> set[str]:
        raw = {**base(grid__dataset=["cxr"], grid__class_weight=["none"], **changes), "datasets": folders}
        return {job.key for job in expand_jobs(validate_sweep(raw))}

    plain = keys()
    assert keys(finetune__accumulate_steps=1) == plain
    assert keys(finetune__accumulate_steps=2).isdisjoint(plain)
    product = keys(finetune__guidance={"loss": "product"})
    assert product.isdisjoint(plain)
    assert keys(finetune__guidance={"loss": "product", "map": "gradcam"}) == product  # defaults spelt out
    assert keys(finetune__guidance={"loss": "division"}).isdisjoint(product)
    assert keys(finetune__guidance={"loss": "product", "layer": "backbone.body.layer3"}).isdisjoint(product)


# ------------------------------------------------------------------------------------- gradient accumulation


class _LinearTask:
    """A BatchNorm-free model, so two accumulated half batches equal one whole batch exactly."""

    def __init__(self):
        torch.manual_seed(0)
        self.module = torch.nn.Linear(4, 2)

    def param_groups(self):
        return list(self.module.parameters())

    def set_train_mode(self):
        self.module.train()

    def loss(self, images, labels):
        return F.cross_entropy(self.module(images.float().flatten(1) / 255), labels)

    def after_step(self, progress):
        pass

    def validate(self):
        return {}


def test_guidance_accumulate_steps_equals_one_larger_batch(tmp_path):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (16, 1, 2, 2), dtype=torch.uint8, generator=generator)
    data = ImageSplit(images, torch.arange(16) % 2)
    weights = []
    for batch_size, accumulate in ((16, 1), (8, 2), (4, 4)):
        task = _LinearTask()
        settings = StageSettings(epochs=2, batch_size=batch_size, lr=0.5, schedule="constant", momentum=0.0)
        cpu = Precision(torch.device("cpu"))
        fit(
            task,
            data,
            settings,
            seed=0,
            workdir=tmp_path / f"b{batch_size}",
            precision=cpu,
            accumulate_steps=accumulate,
        )
        weights.append(task.module.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6) and torch.allclose(weights[0], weights[2], atol=1e-6)


# ----------------------------------------------------------------------------------------------- end to end


def test_guidance_fine_tune_run_logs_magtr_per_epoch_and_cam_figures(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    make_class_folders(tmp_path / "data" / "covid", counts={"COVID": 24, "Normal": 24})
    sweep = {
        "name": "guided",
        "output_dir": str(tmp_path / "outputs"),
        "data_root": str(tmp_path / "data"),
        "datasets": {"cxr": {"root": "covid", "images_subdir": "images", "masks_subdir": "masks"}},
        "grid": {"dataset": ["cxr"], "size": [28], "method": ["supervised"], "backbone": ["small_cnn"]},
        "finetune": {
            "epochs": 2,
            "batch_size": 8,
            "accumulate_steps": 2,
            "optimizer": "adam",
            "lr": 1e-3,
            "guidance": {"loss": "weighted_sum", "k1": 1.0, "k2": 0.5, "k3": 0.5},
        },
        "cam": {"methods": ["gradcam"], "faithfulness": False, "images_per_class": 1},
        "data": {"duplicates": "off"},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    assert sweep_main([str(path), "--quiet"], project_root=tmp_path) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("guided")
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'finetune'")
    assert run.info.status == "FINISHED"
    for name in ("train_loss", "train_ce", "train_magtr", "train_mangtr", "val_magtr", "val_mangtr", "val_acc"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [0, 1], name
        assert all(math.isfinite(m.value) for m in history), name
    for name in ("train_magtr", "train_mangtr", "val_magtr", "val_mangtr"):
        assert all(0 <= m.value <= 1 for m in client.get_metric_history(run.info.run_id, name)), name
    assert "test_acc" in run.data.metrics and "cam_gradcam_magtr" in run.data.metrics
    cams = {Path(item.path).name for item in client.list_artifacts(run.info.run_id, "cam")}
    assert any(name.endswith(".png") and "cam_class" in name for name in cams), cams
