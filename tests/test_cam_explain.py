"""The explain step: CAM figures, metric names, bounded cost, settings, and the pieces it is made of."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ssl_hpc.config import CamSettings
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.explain.cams import compute_cams, resolve_target
from ssl_hpc.explain.faithfulness import FastNoisyLinearImputer, topk_binary_maps
from ssl_hpc.explain.figures import compare_models_figure
from ssl_hpc.explain.run import explain_classifier
from ssl_hpc.models.backbones import Backbone, BackboneInfo, BackboneRequest, build_backbone
from ssl_hpc.models.classifier import Classifier, Preprocess, build_head

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLASSES = ("normal", "pneumonia", "other")
# Every CAM method's metrics when the images have masks: cam_<method>_<score> (docs/conventions.md).
SCORES_WITH_MASKS = (
    "road_morf",
    "road_lerf",
    "road_combined",
    "topk_conf_drop",
    "seconds_per_image",
    "blank_fraction",
    "randomization_spearman",
    "energy_inside",
    "magtr",
    "mangtr",
)
SCORES_WITHOUT_MASKS = SCORES_WITH_MASKS[:7]


def cam_metric_names(slugs, scores) -> set[str]:
    """What an explain run logs for these methods and scores: each score, each score but the timing with its
    bootstrap interval (``_ci_low``, ``_ci_high``), and ``_n_images``."""
    names = set()
    for slug in slugs:
        names.add(f"cam_{slug}_n_images")
        for score in scores:
            names.add(f"cam_{slug}_{score}")
            if score != "seconds_per_image":
                names |= {f"cam_{slug}_{score}_ci_low", f"cam_{slug}_{score}_ci_high"}
    return names


def tiny_classifier(num_classes: int = 3) -> Classifier:
    """A two-conv CNN (14x14 CAM grid at 28 px): cheap enough to explain hundreds of images in a test."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    info = BackboneInfo(num_features=16, stages=("0", "2"), cam_layer="3", mean=(0.5,), std=(0.5,), family="cnn")
    return Classifier(
        Preprocess(1, 1, info.mean, info.std), Backbone(body, info), build_head("linear", 16, num_classes)
    )


def random_split(count: int, seed: int = 0, classes: int = 3) -> tuple[ImageSplit, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    split = ImageSplit(
        torch.randint(0, 256, (count, 1, 28, 28), generator=generator, dtype=torch.uint8),
        torch.randint(0, classes, (count,), generator=generator),
    )
    probs = np.random.default_rng(seed).dirichlet(np.ones(classes), size=count)
    return split, probs


class ForwardCounter:
    """Counts the images that go through a module's forward (a hook: no timing involved)."""

    def __init__(self, module: nn.Module):
        self.images = 0
        self.largest_batch = 0
        module.register_forward_hook(self)

    def __call__(self, _module, inputs, _output):
        self.images += inputs[0].shape[0]
        self.largest_batch = max(self.largest_batch, inputs[0].shape[0])


def test_explain_writes_figures_and_the_specified_metrics(tmp_path):
    model = tiny_classifier()
    split, probs = random_split(120)
    masks = torch.zeros(120, 1, 28, 28, dtype=torch.uint8)
    masks[:, :, 4:14, 4:14] = 1
    settings = CamSettings(
        methods=["gradcam", "gradcam++"], max_images=12, images_per_class=2, road_percentiles=[30, 70]
    )
    metrics, paths = explain_classifier(
        model, split, probs, CLASSES, settings, tmp_path / "cam", torch.device("cpu"), masks=masks
    )
    assert set(metrics) == cam_metric_names(("gradcam", "gradcampp"), SCORES_WITH_MASKS)
    assert all(np.isfinite(value) for value in metrics.values())
    assert 0.0 <= metrics["cam_gradcam_energy_inside"] <= 1.0
    for slug in ("gradcam", "gradcampp"):
        assert metrics[f"cam_{slug}_n_images"] == 12
        for score in SCORES_WITH_MASKS:
            if score != "seconds_per_image":
                low, high = metrics[f"cam_{slug}_{score}_ci_low"], metrics[f"cam_{slug}_{score}_ci_high"]
                assert low - 1e-12 <= metrics[f"cam_{slug}_{score}"] <= high + 1e-12, (slug, score, low, high)
    names = sorted(path.name for path in paths)
    assert names == sorted(
        [
            "confidence_histograms.png",
            "cam_class0_normal.png",
            "cam_class1_pneumonia.png",
            "cam_class2_other.png",
            "cam_summary.json",
        ]
    )
    for path in paths:
        assert path.parent == tmp_path / "cam" and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
    summary = json.loads((tmp_path / "cam" / "cam_summary.json").read_text())
    assert summary["target_layer"] == "backbone.body.3" and summary["grid"] == [14, 14]
    assert summary["score_images"] == 12


def test_no_masks_no_localization_metrics_and_faithfulness_can_be_off(tmp_path):
    model = tiny_classifier()
    split, probs = random_split(40)
    metrics, _ = explain_classifier(
        model,
        split,
        probs,
        CLASSES,
        CamSettings(methods=["gradcam"], max_images=8, images_per_class=1, road_percentiles=[50]),
        tmp_path,
        torch.device("cpu"),
    )
    assert set(metrics) == cam_metric_names(["gradcam"], SCORES_WITHOUT_MASKS)
    metrics, paths = explain_classifier(
        model,
        split,
        probs,
        CLASSES,
        CamSettings(methods=["gradcam"], faithfulness=False, images_per_class=1),
        tmp_path / "b",
        torch.device("cpu"),
    )
    assert set(metrics) == cam_metric_names(
        ["gradcam"], ("seconds_per_image", "blank_fraction", "randomization_spearman")
    )
    assert json.loads((tmp_path / "b" / "cam_summary.json").read_text())["score_images"] == 0


def test_cost_is_bounded_by_the_settings_not_by_the_split(tmp_path):
    """A 500-image and a 2,000-image test split cost exactly the same number of forward passes."""
    settings = CamSettings(methods=["gradcam"], max_images=16, images_per_class=2, road_percentiles=[50])
    counts = []
    for count in (500, 2000):
        model = tiny_classifier()
        counter = ForwardCounter(model)
        split, probs = random_split(count, seed=1)
        explain_classifier(model, split, probs, CLASSES, settings, tmp_path / str(count), torch.device("cpu"))
        summary = json.loads((tmp_path / str(count) / "cam_summary.json").read_text())
        assert summary["test_images"] == count
        assert summary["score_images"] == 16
        assert summary["figure_images"] <= 2 * 2 * len(CLASSES)
        needed = set(summary["score_indices"]) | set(summary["figure_indices"])
        assert summary["images_processed"]["gradcam"] == len(needed) <= 16 + 2 * 2 * len(CLASSES)
        assert counter.largest_batch <= settings.batch_size
        # one probe image to find the layer, each needed image once for its CAM, and per scored image two
        # forwards (before/after) per ROAD order and percentile plus two for the top-k score
        assert counter.images == 1 + len(needed) + 16 * (2 * 2 * len(settings.road_percentiles) + 2)
        counts.append(counter.images)
    assert max(counts) < 500  # far below one pass over the smaller split


def test_disabled_does_nothing(tmp_path):
    model = tiny_classifier()
    counter = ForwardCounter(model)
    split, probs = random_split(20)
    out = tmp_path / "cam"
    assert explain_classifier(model, split, probs, CLASSES, CamSettings(enabled=False), out, torch.device("cpu")) == (
        {},
        [],
    )
    assert not out.exists() and counter.images == 0


def test_frozen_backbone_still_gets_gradient_cams_and_is_left_as_found():
    model = tiny_classifier()
    model.backbone.requires_grad_(False)
    model.train()
    images = torch.rand(4, 1, 28, 28)
    target = resolve_target(model, images[:1])
    maps = compute_cams(model, images, "gradcam", target, [0, 1, 2, 0])
    assert maps.shape == (4, 28, 28) and maps.dtype == np.float32
    assert maps.max() > 0 and 0.0 <= maps.min() and maps.max() <= 1.0 + 1e-6
    assert model.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_all_methods_run_on_a_cnn_and_a_vit():
    images = torch.rand(2, 1, 28, 28)
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", BackboneRequest(1, 28))
    models = [
        tiny_classifier(),
        Classifier(Preprocess(1, 1, vit.info.mean, vit.info.std), vit, build_head("linear", vit.num_features, 3)),
    ]
    for model in models:
        target = resolve_target(model, images[:1])
        for method in CamSettings.model_fields["methods"].annotation.__args__[0].__args__:
            if method == "cam" and model.backbone.info.family == "vit":  # plain CAM needs GAP + linear
                with pytest.raises(ValueError, match=r"cam\.methods"):
                    compute_cams(model, images, method, target, [0, 1])
                continue
            maps = compute_cams(model, images, method, target, [0, 1], method_batch_size=64, max_channels=8)
            assert maps.shape == (2, 28, 28) and np.isfinite(maps).all(), (type(model.backbone.body), method)


def test_too_coarse_default_layer_falls_back_and_an_override_is_kept():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", BackboneRequest(1, 28, stem="imagenet"))  # layer4 is 1x1 at 28 px
    model = Classifier(
        Preprocess(1, 1, backbone.info.mean, backbone.info.std),
        backbone,
        build_head("linear", backbone.num_features, 2),
    )
    sample = torch.rand(1, 1, 28, 28)
    target = resolve_target(model, sample, min_grid=4)
    assert (target.name, target.grid, target.fell_back_from) == (
        "backbone.body.layer2.1",
        (4, 4),
        "backbone.body.layer4.1",
    )
    assert resolve_target(model, sample, min_grid=1).name == "backbone.body.layer4.1"
    kept = resolve_target(model, sample, override="backbone.body.layer4", min_grid=4)
    assert (kept.name, kept.grid, kept.fell_back_from) == ("backbone.body.layer4", (1, 1), None)
    with pytest.raises(ValueError, match="cam.target_layer 'backbone.body.layer9'"):
        resolve_target(model, sample, override="backbone.body.layer9")


def test_settings_refuse_bad_values_naming_the_field():
    with pytest.raises(ValidationError, match=r"methods\.1[\s\S]*'gradcam', 'gradcam\+\+'"):
        CamSettings(methods=["gradcam", "fullgrad"])
    with pytest.raises(ValidationError, match="max_images"):
        CamSettings(max_images=0)
    with pytest.raises(ValidationError, match="road_percentiles"):
        CamSettings(road_percentiles=[0, 50])
    with pytest.raises(ValidationError, match="repeated CAM methods"):
        CamSettings(methods=["gradcam", "gradcam"])
    with pytest.raises(ValidationError, match="extra"):
        CamSettings(max_image=3)
    defaults = CamSettings()
    assert defaults.enabled and defaults.methods == ["gradcam++"] and defaults.target_layer is None


def test_masks_must_align_with_the_test_split(tmp_path):
    split, probs = random_split(10)
    with pytest.raises(ValueError, match="aligned with the test split"):
        explain_classifier(
            tiny_classifier(),
            split,
            probs,
            CLASSES,
            CamSettings(),
            tmp_path,
            torch.device("cpu"),
            masks=torch.zeros(9, 28, 28),
        )


def test_fast_imputer_matches_pytorch_grad_cam_noise_included():
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    rng = np.random.default_rng(0)
    for channels in (1, 3):
        image = torch.rand(channels, 28, 28)
        for removed in (0.1, 0.5, 0.9, 1.0):
            mask = torch.from_numpy((rng.random((28, 28)) >= removed).astype(np.float32))
            torch.manual_seed(3)
            expected = NoisyLinearImputer()(image, mask)
            torch.manual_seed(3)
            assert torch.allclose(FastNoisyLinearImputer()(image, mask), expected, atol=1e-5)


def test_topk_keeps_exactly_k_percent():
    maps = np.random.default_rng(0).random((3, 10, 10)).astype(np.float32)
    maps[2] = 0.0  # a constant map still keeps exactly k %
    binary = topk_binary_maps(maps, 10.0)
    assert (binary.reshape(3, -1).sum(axis=1) == 10).all()
    assert binary[0].reshape(-1)[np.argmax(maps[0])] == 1.0


def test_compare_models_figure(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    maps = {"reference": np.random.default_rng(1).random((3, 28, 28)), "moco_e2e": np.zeros((3, 28, 28))}
    path = compare_models_figure(
        images, maps, [0, 1, 0], CLASSES, tmp_path / "compare.png", preds_by_model={"reference": [0, 1, 1]}
    )
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="2 maps for 3 images"):
        compare_models_figure(images, {"x": np.zeros((2, 28, 28))}, [0, 1, 0], CLASSES, tmp_path / "bad.png")
