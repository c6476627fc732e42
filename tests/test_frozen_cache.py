"""Frozen fine-tuning on cached features computes what recomputing the features every epoch computes.

Both paths run through ``train_classifier`` (the fine-tune stage's own code, with a stub tracker) on
generated images with a learnable signal; the only difference is ``runtime.feature_cache``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_hpc.config import DataSettings, FinetuneSettings, ModelSettings, RunConfig, RuntimeSettings
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.jobs import Job
from ssl_hpc.models.factory import build_classifier
from ssl_hpc.train import feature_cache, finetune_run
from ssl_hpc.train.handle import RunContext, RunHandle
from ssl_hpc.train.loop import Precision

# The two paths feed the backbone batches of other sizes (128 vs 512), so its float32 features may differ
# in the last bits; everything downstream must agree to this (relative and absolute) tolerance.
TOLERANCE = 1e-5
EPOCHS = 4


class StubTracker:
    """Records what the stage would log to MLflow."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, float] = {}

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_metrics(self, run_id: str, metrics, step: int | None = None) -> None:
        if step is None:
            self.metrics.update(metrics)

    def logged_steps(self, run_id: str, name: str) -> list[int]:
        return []


def split(n: int, seed: int) -> ImageSplit:
    """Noise images whose label sets their brightness: a frozen random backbone separates them, slowly."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    noise = torch.randint(0, 160, (n, 1, 28, 28), generator=generator)
    return ImageSplit((noise + 40 * labels.view(-1, 1, 1, 1)).to(torch.uint8), labels)


DATASET = LabeledDataset("generated", split(96, 1), split(48, 2), split(64, 3), ("dark", "bright"))


def config(augment: str = "none", epochs: int = EPOCHS) -> RunConfig:
    return RunConfig(
        stage="finetune",
        method="supervised",
        dataset="pneumoniamnist",
        size=28,
        backbone="resnet18",
        seed=0,
        model=ModelSettings(stem="imagenet"),
        data=DataSettings(),
        finetune="frozen",
        label_fraction=1.0,
        class_weight="inverse_frequency",  # the cached loss must keep the class weights
        finetune_settings=FinetuneSettings(epochs=epochs, batch_size=32, lr=0.01, augment=augment),
    )


def run(workdir: Path, cache: bool, augment: str = "none", epochs: int = EPOCHS):
    """``train_classifier`` as the fine-tune stage calls it; returns its outputs, the tracker and the model."""
    torch.manual_seed(0)
    run_config = config(augment, epochs)
    model = build_classifier(run_config, num_classes=2, dataset_channels=1)
    context = RunContext(
        sweep_name="cache",
        tracking_uri="unused",
        output_root=workdir,
        data_root=workdir,
        runtime=RuntimeSettings(feature_cache=cache, eval_batch_size=512),
    )
    tracker = StubTracker()
    handle = RunHandle(Job("k", run_config), tracker, "run", workdir, Precision(torch.device("cpu")), context)
    outputs = finetune_run.train_classifier(handle, model, DATASET.train, DATASET.val, DATASET.test, DATASET)
    return outputs, tracker, model


def assert_same_training(cached, recomputed) -> None:
    (history, best, _, val_probs, test_probs), (history_ref, best_ref, _, val_ref, test_ref) = cached, recomputed
    assert len(history) == len(history_ref) == EPOCHS
    for name in ("train_loss", "val_loss", "val_acc", "val_balanced_acc", "val_auc", "lr"):
        np.testing.assert_allclose(
            [entry[name] for entry in history],
            [entry[name] for entry in history_ref],
            rtol=TOLERANCE,
            atol=TOLERANCE,
            err_msg=name,
        )
    assert best == best_ref
    np.testing.assert_allclose(val_probs, val_ref, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(test_probs, test_ref, rtol=TOLERANCE, atol=TOLERANCE)


def test_cached_features_train_the_same_head_as_recomputed_features(tmp_path):
    cached, tracker, model = run(tmp_path / "cached", cache=True)
    recomputed, tracker_ref, model_ref = run(tmp_path / "recomputed", cache=False)

    assert tracker.tags["feature_cache"] == "true" and "feature_cache" not in tracker_ref.tags
    assert tracker.metrics["feature_cache_seconds"] > 0
    history = cached[0]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the head learned something to compare
    assert_same_training(cached, recomputed)
    # the kept model is the whole classifier: same backbone (bit for bit, BatchNorm statistics included), same head
    state, state_ref = model.state_dict(), model_ref.state_dict()
    assert state.keys() == state_ref.keys() and any(name.startswith("backbone.") for name in state)
    for name, tensor in state.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, state_ref[name]), name
        else:
            torch.testing.assert_close(tensor, state_ref[name], rtol=TOLERANCE, atol=TOLERANCE)


def test_a_cached_run_resumes_from_a_checkpoint_the_uncached_path_wrote(tmp_path):
    """The checkpoint is the same whole model either way: half a run without the cache, the rest with it."""
    run(tmp_path / "resumed", cache=False, epochs=EPOCHS // 2)
    resumed, tracker, _ = run(tmp_path / "resumed", cache=True)
    assert tracker.tags["resumed_after_epoch"] == str(EPOCHS // 2 - 1) and tracker.tags["feature_cache"] == "true"
    recomputed, _, _ = run(tmp_path / "recomputed", cache=False)
    assert_same_training(resumed, recomputed)


def train_mode_features(model, splits, precision, batch_size):
    """A wrong cache: BatchNorm on batch statistics (what a backbone left in train mode would give)."""
    real = feature_cache.cache_features(model, splits, precision, batch_size)
    model.train()
    with torch.no_grad():
        train = model.features(splits["train"].images.float() / 255)
    return dataclasses.replace(real, train=feature_cache.FeatureSplit(train, real.train.labels))


def shifted_features(model, splits, precision, batch_size):
    """A wrong cache: each training example gets its neighbour's features."""
    real = feature_cache.cache_features(model, splits, precision, batch_size)
    features = real.train.features.roll(1, dims=0)
    return dataclasses.replace(real, train=feature_cache.FeatureSplit(features, real.train.labels))


@pytest.mark.parametrize("wrong_cache", [train_mode_features, shifted_features])
def test_the_comparison_catches_a_wrong_cache(tmp_path, monkeypatch, wrong_cache):
    recomputed, _, _ = run(tmp_path / "recomputed", cache=False)
    monkeypatch.setattr(finetune_run, "cache_features", wrong_cache)
    cached, tracker, _ = run(tmp_path / "cached", cache=True)
    assert tracker.tags["feature_cache"] == "true"
    with pytest.raises(AssertionError):
        assert_same_training(cached, recomputed)


def test_a_frozen_run_with_augmentation_recomputes_its_features(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an augmented run must not use cached features")

    monkeypatch.setattr(finetune_run, "cache_features", refuse)
    (history, *_), tracker, _ = run(tmp_path, cache=True, augment="flip", epochs=1)
    assert len(history) == 1 and "feature_cache" not in tracker.tags


def test_only_frozen_unaugmented_runs_use_the_cache():
    assert feature_cache.uses_feature_cache("frozen", "none")
    assert not feature_cache.uses_feature_cache("frozen", "none", enabled=False)
    for augment in ("flip", "crop_flip"):
        assert not feature_cache.uses_feature_cache("frozen", augment)
    for mode in ("partial", "end_to_end", "knn", None):
        assert not feature_cache.uses_feature_cache(mode, "none")
