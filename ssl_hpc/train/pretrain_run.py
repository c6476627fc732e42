"""The pretraining stage of a run: unlabelled images in, a pretrained backbone out.

The backbone's weights are logged as ``backbone.pt``; every fine-tune job that depends on this
run downloads them from MLflow, so a fine-tune job can run on another node than its pretraining.
"""

from __future__ import annotations

import torch

from ssl_hpc.data.augment import view_augmentation
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.evaluate.knn import extract_features, knn_probs
from ssl_hpc.evaluate.plots import plot_curves
from ssl_hpc.files import load_checkpoint
from ssl_hpc.models.factory import backbone_request, build_backbone_for, preprocess_for
from ssl_hpc.models.methods import METHODS
from ssl_hpc.models.pretrained import load_pretrained
from ssl_hpc.tracking import FINISHED
from ssl_hpc.train.handle import RunHandle, save_model
from ssl_hpc.train.loop import fit
from ssl_hpc.train.pretrain import PretextTask

BACKBONE_ARTIFACT = "backbone.pt"


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Extra unlabelled sources may be RGB for a grayscale dataset or the reverse."""
    if images.shape[1] == channels:
        return images
    if channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images.float() * weights).sum(dim=1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return images.expand(-1, channels, -1, -1).contiguous()


def pretraining_images(dataset: LabeledDataset, extra: list[LabeledDataset]) -> ImageSplit:
    """The whole train split, labels dropped, plus the train splits of extra unlabelled sources."""
    parts = [dataset.train.images] + [match_channels(source.train.images, dataset.channels) for source in extra]
    images = torch.cat(parts)
    return ImageSplit(images, torch.zeros(len(images), dtype=torch.long))


def run_pretrain(handle: RunHandle, cache: DatasetCache) -> None:
    config = handle.job.config
    settings = config.pretrain_settings
    assert settings is not None
    spec = METHODS[config.method]
    device = handle.precision.device
    dataset = cache.get(config.dataset, config.size, download=config.data.download)
    extra = [cache.get(name, config.size, download=config.data.download) for name in settings.extra_unlabeled]
    handle.log_dataset(cache, config.dataset, config.size)
    for name in settings.extra_unlabeled:
        handle.log_dataset(cache, name, config.size, context="unlabeled")
    unlabeled = pretraining_images(dataset, extra).to(device)
    handle.tracker.set_tags(handle.run_id, {"n_pretrain_images": str(len(unlabeled))})

    request = backbone_request(config, dataset.channels)
    model = spec.build_pretext(config.backbone, request, settings)
    if config.model.pretrained_weights:  # continued pretraining, e.g. SimCLR from ImageNet weights
        load_pretrained(model.backbone, config.backbone, config.model.pretrained_weights, request)
        model.backbone_loaded()
    preprocess = handle.precision.prepare(preprocess_for(config, model.backbone, dataset.channels))
    model = handle.precision.prepare(model)
    augment = view_augmentation(
        spec.view_preset,
        dataset.image_size,
        dataset.channels,
        settings.crop_scale_min,
        settings.color_jitter,
        settings.gray_scale_prob,
        settings.blur_prob,
        modality="natural" if settings.modality == "auto" else settings.modality,
    )
    task = PretextTask(model, preprocess, augment, spec.views)
    handle.timer.switch("train")
    result = fit(
        task,
        unlabeled,
        settings,
        seed=config.seed,
        workdir=handle.workdir,
        precision=handle.precision,
        on_epoch_end=handle.log_epoch,
        on_resume=handle.log_history,
        progress=handle.context.progress,
        checkpoints=handle.checkpoint_policy,
        description=f"{config.method}/pretrain {handle.job.key}",
    )
    handle.timer.switch("eval")
    # The backbone as fine-tuning will build it (AIM's causal ViT becomes a plain timm ViT).
    backbone = handle.precision.prepare(build_backbone_for(config, dataset.channels))
    backbone.load_state_dict(model.backbone.state_dict())
    encoder = torch.nn.Sequential(preprocess, backbone)
    metrics = {
        "train_seconds": sum(entry["epoch_seconds"] for entry in result.history),
        "knn_val_acc": knn_monitor(encoder, dataset, device, handle.context.runtime.eval_batch_size),
    }
    handle.log_metrics(metrics)
    folder = handle.artifact_dir()
    handle.log_artifacts(
        [
            save_model(model.backbone.state_dict(), folder / BACKBONE_ARTIFACT),
            plot_curves(result.history, folder / "curves.png", title=handle.job.describe()),
        ]
    )


def knn_monitor(encoder: torch.nn.Module, dataset: LabeledDataset, device: torch.device, batch_size: int) -> float:
    """Validation accuracy of a 20-NN classifier on the features: a cheap read of representation
    quality, for monitoring only (no run selects anything by it)."""
    train, val = dataset.train.to(device), dataset.val.to(device)
    probs = knn_probs(
        extract_features(encoder, train.images, batch_size),
        train.labels,
        extract_features(encoder, val.images, batch_size),
        dataset.num_classes,
    )
    return float((probs.argmax(dim=1) == val.labels).float().mean())


class PretrainingNotReady(RuntimeError):
    """A fine-tune job ran before its pretraining job finished."""


def fetch_pretrained_backbone(handle: RunHandle) -> dict[str, torch.Tensor]:
    """The weights logged by this run's pretraining job, from MLflow."""
    key = handle.job.config.pretrain_key
    run = handle.tracker.run_for_key(key)
    if run is None or run.info.status != FINISHED:
        state = "has no MLflow run" if run is None else f"is {run.info.status}"
        raise PretrainingNotReady(
            f"pretraining job {key} {state}; its fine-tune jobs can only run after it finished "
            "(re-run the sweep: finished jobs are skipped)"
        )
    path = handle.tracker.download_artifact(run.info.run_id, BACKBONE_ARTIFACT, handle.workdir / "pretrained")
    handle.tracker.set_tags(handle.run_id, {"pretrain_run_id": run.info.run_id})
    return load_checkpoint(path)
