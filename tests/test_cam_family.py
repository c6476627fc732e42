"""Guided Grad-CAM, Faster Score-CAM and plain CAM: checked against pytorch-grad-cam's own methods, refused
where undefined, and present in the figures and metrics of an explain run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import ssl_hpc.explain.run as explain_run
from ssl_hpc.config import CamSettings, ConfigError, validate_sweep
from ssl_hpc.explain.cams import compute_cams, plain_cam_target, resolve_target
from ssl_hpc.explain.faster_scorecam import top_variance_channels
from ssl_hpc.explain.run import explain_classifier
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.models.backbones import BackboneRequest, build_backbone
from ssl_hpc.models.classifier import Classifier, Preprocess, build_head
from test_cam_explain import CLASSES, SCORES_WITH_MASKS, cam_metric_names, random_split, tiny_classifier
from test_config import base

CLASS_OF = [0, 1, 2, 1, 0]
NEW = ("guided_gradcam", "faster_scorecam", "cam")


def images(count: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_guided_gradcam_is_pytorch_grad_cams_guided_backprop_times_gradcam():
    model = tiny_classifier()
    batch = images()
    target = resolve_target(model, batch[:1])
    ours = compute_cams(model, batch, "guided_gradcam", target, CLASS_OF)
    # The reference, as pytorch-grad-cam's cam.py example builds it, on a copy (the library swaps the copy's ReLUs).
    reference_model = copy.deepcopy(model).eval()
    layer = reference_model.get_submodule(target.name)
    coarse = GradCAM(reference_model, [layer])(batch, [ClassifierOutputTarget(c) for c in CLASS_OF])
    guided = GuidedBackpropReLUModel(reference_model)
    fine = np.stack([guided(batch[i : i + 1].clone(), target_category=c) for i, c in enumerate(CLASS_OF)])
    product = np.abs(fine * coarse[..., None]).sum(axis=-1)
    expected = product / product.reshape(len(product), -1).max(axis=1)[:, None, None]
    assert ours.shape == (5, 28, 28) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    assert ours.reshape(5, -1).max(axis=1) == pytest.approx(1.0)
    # pixel level: finer than the Grad-CAM map, which is smooth at the 14 x 14 grid
    assert not np.allclose(ours, coarse / coarse.reshape(5, -1).max(axis=1)[:, None, None], atol=0.05)


def test_guided_gradcam_leaves_the_models_relus_and_hooks_in_place():
    model = tiny_classifier()
    relus = [module for module in model.modules() if isinstance(module, torch.nn.ReLU)]
    batch = images(2)
    target = resolve_target(model, batch[:1])  # the small CNN's CAM layer is a ReLU
    first = compute_cams(model, batch, "guided_gradcam", target, [0, 1], batch_size=1)
    assert [module for module in model.modules() if isinstance(module, torch.nn.ReLU)] == relus
    assert model.get_submodule(target.name) is target.module
    np.testing.assert_allclose(compute_cams(model, batch, "guided_gradcam", target, [0, 1]), first, atol=1e-5)


def test_faster_scorecam_with_every_channel_is_pytorch_grad_cams_scorecam():
    model = tiny_classifier()  # 16 channels at its CAM layer
    batch = images()
    target = resolve_target(model, batch[:1])
    layer = copy.deepcopy(model).eval()
    reference = ScoreCAM(layer, [layer.get_submodule(target.name)])
    reference.batch_size = 64
    expected = np.concatenate(
        [reference(batch[i : i + 1], [ClassifierOutputTarget(c)]) for i, c in enumerate(CLASS_OF)]
    )
    for channels in (16, 1000):
        ours = compute_cams(model, batch, "faster_scorecam", target, CLASS_OF, max_channels=channels)
        np.testing.assert_allclose(ours, expected, atol=1e-5)  # the same maps up to float rounding
    assert np.abs(compute_cams(model, batch, "scorecam", target, CLASS_OF) - expected).max() < 1e-5


def test_faster_scorecam_with_fewer_channels_differs_but_stays_sane():
    model = tiny_classifier()
    batch = images()
    target = resolve_target(model, batch[:1])
    full = compute_cams(model, batch, "scorecam", target, CLASS_OF)
    few = compute_cams(model, batch, "faster_scorecam", target, CLASS_OF, max_channels=4)
    assert few.shape == full.shape and np.isfinite(few).all()
    assert few.min() >= 0.0 and few.max() <= 1.0 + 1e-6 and (few.reshape(5, -1).max(axis=1) > 0.99).all()
    assert np.abs(few - full).max() > 1e-3  # not Score-CAM any more...
    correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(few, full)])
    assert correlation > 0.3, correlation  # ...but close to it: the informative channels are kept


def test_faster_scorecam_keeps_the_channels_of_highest_variance():
    activations = np.zeros((2, 4, 3, 3), dtype=np.float32)
    activations[0, 2] = np.arange(9).reshape(3, 3)  # image 0: channel 2 varies most, then 0
    activations[0, 0, 0, 0] = 1.0
    activations[1, 3, 1, 1] = 5.0  # image 1: channel 3, then the constant ones in index order
    assert top_variance_channels(activations, 2).tolist() == [[2, 0], [3, 0]]
    assert top_variance_channels(activations, 9).shape == (2, 4)


def test_max_channels_is_validated_naming_the_field():
    assert CamSettings().max_channels == 32
    with pytest.raises(ValidationError, match=r"max_channels[\s\S]*greater than or equal to 1"):
        CamSettings(max_channels=0)


def test_plain_cam_is_gradcam_for_a_gap_linear_head_and_the_hand_computed_map():
    model = tiny_classifier()
    batch = images()
    target = plain_cam_target(model, batch)
    assert target.name == "backbone.body.3"
    ours = compute_cams(model, batch, "cam", target, CLASS_OF)
    # GAP + linear: Grad-CAM's channel weights are W[c] / (h w), a positive scale of CAM's W[c]
    np.testing.assert_allclose(ours, compute_cams(model, batch, "gradcam", target, CLASS_OF), atol=1e-5)
    # by hand: sum_k W[c, k] A_k at the 14 x 14 grid, ReLU, bilinearly upsampled, min-max scaled
    import cv2

    with torch.no_grad():
        maps = model.backbone.body[:4](model.preprocess(batch))
    weight = model.head.weight.detach()
    for index, cls in enumerate(CLASS_OF):
        cam = cv2.resize(torch.relu(torch.einsum("k,khw->hw", weight[cls], maps[index])).numpy(), (28, 28))
        np.testing.assert_allclose(ours[index], (cam - cam.min()) / (cam.max() - cam.min()), atol=1e-5)


def test_plain_cam_refuses_heads_that_are_not_gap_linear_naming_the_setting():
    batch = images(2)
    mlp = tiny_classifier()
    mlp.head = build_head("mlp", 16, 3, hidden=8)
    with pytest.raises(ValueError, match=r"cam\.methods: 'cam' cannot explain[\s\S]*not one nn.Linear"):
        plain_cam_target(mlp, batch)
    with pytest.raises(ValueError, match=r"cam\.methods"):
        compute_cams(mlp, batch, "cam", resolve_target(mlp, batch[:1]), [0, 1])
    torch.manual_seed(0)
    vit = build_backbone("vit_mini", BackboneRequest(1, 28))
    vit_model = Classifier(Preprocess(1, 1, vit.info.mean, vit.info.std), vit, build_head("linear", 128, 3))
    with pytest.raises(ValueError, match=r"cam\.methods[\s\S]*ViT tokens"):
        plain_cam_target(vit_model, batch)
    # a target layer that is not the pooled one (the first conv's ReLU: 8 channels for a 16-wide head)
    with pytest.raises(ValueError, match=r"cam\.methods[\s\S]*backbone.body.1"):
        plain_cam_target(tiny_classifier(), batch, "backbone.body.1")


def test_plain_cam_refused_by_an_explain_run_before_any_map(tmp_path, monkeypatch):
    model = tiny_classifier()
    model.head = build_head("mlp", 16, 3, hidden=8)
    split, probs = random_split(10)
    calls = []
    monkeypatch.setattr(explain_run, "compute_cams", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ValueError, match=r"cam\.methods"):
        explain_classifier(
            model, split, probs, CLASSES, CamSettings(methods=["gradcam", "cam"]), tmp_path, torch.device("cpu")
        )
    assert calls == []


def test_plain_cam_refused_when_the_sweep_is_expanded():
    expand_jobs(validate_sweep(base(cam__methods=["gradcam", "cam"])))  # resnet18 + linear head: fine
    with pytest.raises(ConfigError, match=r"cam\.methods: 'cam' cannot explain[\s\S]*mlp head"):
        expand_jobs(validate_sweep(base(cam__methods=["cam"], finetune__head="mlp")))
    with pytest.raises(ConfigError, match=r"cam\.methods[\s\S]*vit_mini is a ViT"):
        expand_jobs(validate_sweep(base(cam__methods=["cam"], grid__backbone=["vit_mini"])))
    with pytest.raises(ConfigError, match=r"cam\.methods[\s\S]*vgg16: timm's VGG"):
        expand_jobs(validate_sweep(base(cam__methods=["cam"], grid__backbone=["vgg16"])))
    expand_jobs(validate_sweep(base(cam__methods=["gradcam"], finetune__head="mlp")))  # no 'cam': fine
    expand_jobs(validate_sweep(base(cam__methods=["cam"], cam__enabled=False, finetune__head="mlp")))


def test_new_cam_methods_appear_in_the_figures_and_metrics_of_an_explain_run(tmp_path, monkeypatch):
    headers = []
    drawn = explain_run.class_grid_figure

    def spy(images, maps_by_header, *args, **kwargs):
        headers.append(list(maps_by_header))
        return drawn(images, maps_by_header, *args, **kwargs)

    monkeypatch.setattr(explain_run, "class_grid_figure", spy)
    split, probs = random_split(40)
    masks = torch.zeros(40, 28, 28, dtype=torch.uint8)
    masks[:, 6:20, 6:20] = 1
    settings = CamSettings(methods=list(NEW), max_images=6, images_per_class=1, road_percentiles=[50], max_channels=8)
    metrics, paths = explain_classifier(
        tiny_classifier(), split, probs, CLASSES, settings, tmp_path, torch.device("cpu"), masks=masks
    )
    assert set(metrics) == cam_metric_names(NEW, SCORES_WITH_MASKS)
    assert all(np.isfinite(value) for value in metrics.values())
    assert len(headers) == len(CLASSES)
    for columns in headers:
        assert [column.split(" ")[0] for column in columns] == list(NEW)
    assert sum(path.suffix == ".png" for path in paths) == len(CLASSES) + 1
    summary = json.loads((tmp_path / "cam_summary.json").read_text())
    assert summary["methods"] == list(NEW)
    assert summary["layers"] == dict.fromkeys(NEW, "backbone.body.3")


def test_plain_cam_keeps_the_pooled_layer_even_when_coarse_and_says_so(caplog):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", BackboneRequest(1, 28, stem="imagenet"))  # layer4 pools 1 x 1 maps
    model = Classifier(Preprocess(1, 1, backbone.info.mean, backbone.info.std), backbone, build_head("linear", 512, 2))
    target = plain_cam_target(model, images(2), min_grid=4)
    assert (target.name, target.grid) == ("backbone.body.layer4.1", (1, 1))
    assert "plain CAM reads backbone.body.layer4.1" in caplog.text
