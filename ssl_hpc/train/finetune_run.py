"""The fine-tune stage of a run: labels in, a classifier and its test metrics out."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_hpc.data.augment import classification_augmentation
from ssl_hpc.data.class_weights import class_counts, class_weights
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.data.subsets import label_subset
from ssl_hpc.evaluate.knn import extract_features, knn_probs
from ssl_hpc.evaluate.metrics import classification_metrics, confusion
from ssl_hpc.evaluate.plots import plot_confusion_matrix, plot_curves
from ssl_hpc.evaluate.predict import predict_logits, softmax_numpy
from ssl_hpc.models.factory import build_classifier
from ssl_hpc.train.feature_cache import FeatureHeadTask, cache_features, head_logits, uses_feature_cache
from ssl_hpc.train.finetune import ClassificationTask, class_weight_tensor, configure_trainable, count_trainable
from ssl_hpc.train.handle import RunHandle, save_model
from ssl_hpc.train.loop import fit

LEAKAGE_CACHE = ".leakage"  # under the sweep's output folder: one report per dataset fingerprint


def run_finetune(handle: RunHandle, cache: DatasetCache) -> None:
    config = handle.job.config
    settings = config.finetune_settings
    assert settings is not None and config.finetune is not None
    device = handle.precision.device
    dataset = cache.get(config.dataset, config.size, download=config.data.download)
    handle.log_dataset(cache, config.dataset, config.size)
    log_leakage(handle, cache)

    labelled = label_subset(
        dataset.train.labels.numpy(),
        seed=config.seed,
        fraction=config.label_fraction,
        per_class=config.labels_per_class,
    )
    source = dataset.train
    if settings.guidance is not None and config.finetune != "knn":  # the masks travel with the images
        from ssl_hpc.train.guidance import guided_train_split

        source = guided_train_split(dataset)
    train = source.subset(torch.from_numpy(labelled)).to(device)
    val, test = dataset.val.to(device), dataset.test.to(device)
    backbone_state = load_pretrained_backbone(handle) if config.pretrain_key else None
    model = build_classifier(config, dataset.num_classes, dataset.channels, backbone_state)
    handle.tracker.set_tags(
        handle.run_id, {"n_labels": str(len(train)), "class_names": json.dumps(list(dataset.class_names))}
    )

    if config.finetune == "knn":
        model = handle.precision.prepare(model)
        history, best_epoch, seconds, val_probs, test_probs = knn_predictions(
            model, train, val, test, dataset.num_classes, settings.knn_k, handle
        )
    else:
        history, best_epoch, seconds, val_probs, test_probs = train_classifier(handle, model, train, val, test, dataset)

    test_labels, val_labels = test.labels.cpu().numpy(), val.labels.cpu().numpy()
    metrics = classification_metrics(test_labels, test_probs)
    metrics["best_epoch"] = float(best_epoch if best_epoch is not None else -1)
    metrics["train_seconds"] = seconds
    handle.log_metrics(metrics)
    predictions = {
        "test": Predictions(test_probs, test_labels, dataset.test.digest()),
        "val": Predictions(val_probs, val_labels, dataset.val.digest()),
    }
    log_prediction_artifacts(handle, dataset.class_names, predictions, history, best_epoch, model.state_dict())
    log_cams(handle, model, test, test_probs, dataset)


def log_cams(handle: RunHandle, model, test: ImageSplit, probs: np.ndarray, dataset: LabeledDataset) -> None:
    """Where the model looks (CAM figures under ``cam/``) and how faithful those maps are (``cam_*``)."""
    settings = handle.context.cam
    if not settings.enabled or handle.job.config.finetune == "knn":  # a k-NN vote has no head to explain
        return
    handle.timer.switch("cam")
    from ssl_hpc.explain.run import explain_classifier

    masks = dataset.masks.get("test") if dataset.masks else None
    metrics, paths = explain_classifier(
        model,
        test,
        probs,
        dataset.class_names,
        settings,
        handle.artifact_dir() / "cam",
        handle.precision.device,
        masks=masks,
    )
    handle.log_metrics(metrics)
    handle.log_artifacts(paths, "cam")


def log_leakage(handle: RunHandle, cache: DatasetCache) -> None:
    """The leakage guard, before any training: near-duplicates across splits are counted and logged,
    or stop the run (``data.duplicates: error``)."""
    config = handle.job.config
    report = cache.leakage(
        config.dataset,
        config.size,
        config.data.duplicates,
        config.data.duplicate_threshold,
        config.data.duplicate_min_correlation,
        download=config.data.download,
        cache_folder=leakage_cache_folder(handle),
    )
    if report is None:
        return
    handle.log_metrics(report.as_metrics())
    folder = handle.artifact_dir()
    report.as_table().to_csv(folder / "duplicates.csv", index=False)
    paths = [folder / "duplicates.csv"]
    if not report.clean:
        report.pairs_table(cache.files(config.dataset)).to_csv(folder / "duplicate_pairs.csv", index=False)
        paths.append(folder / "duplicate_pairs.csv")
    handle.log_artifacts(paths, "leakage")


def leakage_cache_folder(handle: RunHandle) -> Path | None:
    """Where the sweep's jobs share their leakage reports (``<output root>/.leakage``), so the scan runs once
    per dataset, not once per job; ``None`` (scan in every process) with ``SSL_HPC_LEAKAGE_CACHE=0``."""
    if os.environ.get("SSL_HPC_LEAKAGE_CACHE", "1") == "0":
        return None
    return handle.context.output_root / LEAKAGE_CACHE


def train_classifier(
    handle: RunHandle, model, train: ImageSplit, val: ImageSplit, test: ImageSplit, dataset: LabeledDataset
):
    """Trains the head (and whatever the mode opens); leaves ``model`` at its kept epoch and returns its
    history, kept epoch, seconds and class probabilities on val and test. A frozen backbone on
    unaugmented images is run once, not every epoch (:mod:`ssl_hpc.train.feature_cache`)."""
    config = handle.job.config
    settings = config.finetune_settings
    runtime = handle.context.runtime
    counts = class_counts(train.labels.cpu().numpy(), dataset.num_classes)
    weights = class_weights(
        config.class_weight or "none", counts, beta=settings.effective_number_beta, class_names=dataset.class_names
    )
    opened = configure_trainable(
        model, config.finetune, settings.trainable_last, settings.trainable_layers, settings.trainable_from
    )
    model = handle.precision.prepare(model)
    tags = {"trainable_params": str(count_trainable(model))}
    if weights is not None:
        tags["class_weights"] = ",".join(f"{w:.4f}" for w in weights)
    weight_tensor = class_weight_tensor(weights, handle.precision.device)
    handle.timer.switch("train")  # the frozen backbone's feature cache is counted in training, as in train_seconds
    cache = None
    # Guidance needs the backbone's activations every step (and its training images carry their masks).
    if settings.guidance is None and uses_feature_cache(config.finetune, settings.augment, runtime.feature_cache):
        cache = cache_features(
            model, {"train": train, "val": val, "test": test}, handle.precision, runtime.eval_batch_size
        )
        tags["feature_cache"] = "true"
        handle.log_metrics({"feature_cache_seconds": cache.seconds})
        task = FeatureHeadTask(model, opened, cache.val, weight_tensor, runtime.eval_batch_size)
    else:
        augment = classification_augmentation(settings.augment, dataset.image_size)
        task = classification_task(
            model, opened, val, dataset, settings, weight_tensor, augment, runtime.eval_batch_size
        )
    handle.tracker.set_tags(handle.run_id, tags)
    result = fit(
        task,
        train if cache is None else cache.train,
        settings,
        seed=config.seed,
        workdir=handle.workdir,
        precision=handle.precision,
        select_by=settings.select_by,
        patience=settings.early_stopping_patience,
        on_epoch_end=handle.log_epoch,
        on_resume=handle.log_history,
        progress=handle.context.progress,
        checkpoints=handle.checkpoint_policy,
        description=f"{config.method}/{config.finetune} {handle.job.key}",
        accumulate_steps=settings.accumulate_steps,
    )
    if result.best_state is not None:
        model.load_state_dict(result.best_state)
    handle.timer.switch("eval")
    seconds = sum(entry["epoch_seconds"] for entry in result.history)  # over every attempt
    batch, autocast = runtime.eval_batch_size, handle.precision.autocast
    if cache is None:
        val_logits, test_logits = (predict_logits(model, split.images, batch, autocast) for split in (val, test))
    else:
        seconds += cache.seconds  # this attempt's; the epochs are what the cache saves
        val_logits, test_logits = (head_logits(model, split, batch, autocast) for split in (cache.val, cache.test))
    return result.history, result.best_epoch, seconds, softmax_numpy(val_logits), softmax_numpy(test_logits)


def classification_task(model, opened, val: ImageSplit, dataset: LabeledDataset, settings, weights, augment, batch):
    """Cross-entropy, or CAM guidance when ``finetune.guidance`` is set (the training images then carry
    their masks as a last channel: :func:`ssl_hpc.train.guidance.guided_train_split`)."""
    if settings.guidance is None:
        return ClassificationTask(model, opened, val, weights, augment, batch)
    from ssl_hpc.train.guidance import GuidedClassificationTask  # pytorch-grad-cam: only when asked for

    val_masks = (dataset.masks or {}).get("val")
    val_masks = val_masks.to(val.images.device) if val_masks is not None else None
    return GuidedClassificationTask(model, opened, val, val_masks, settings.guidance, weights, augment, batch)


def knn_predictions(
    model, train: ImageSplit, val: ImageSplit, test: ImageSplit, num_classes: int, k: int, handle: RunHandle
):
    """k-NN on the frozen backbone's features: no optimiser, no epochs (its time is evaluation)."""
    handle.timer.switch("eval")
    started = time.perf_counter()
    handle.tracker.set_tags(handle.run_id, {"trainable_params": "0"})
    encoder = torch.nn.Sequential(model.preprocess, model.backbone)
    batch = handle.context.runtime.eval_batch_size
    bank = extract_features(encoder, train.images, batch)
    val_probs, test_probs = (
        knn_probs(bank, train.labels, extract_features(encoder, split.images, batch), num_classes, k)
        .cpu()
        .numpy()
        .astype(np.float64)
        for split in (val, test)
    )
    return [], None, time.perf_counter() - started, val_probs, test_probs


@dataclass(frozen=True)
class Predictions:
    """Class probabilities on one split, with the fingerprint of the examples they are for."""

    probs: np.ndarray
    labels: np.ndarray
    split_digest: str

    def save(self, path: Path) -> Path:
        np.savez_compressed(
            path,
            probs=self.probs,
            labels=self.labels,
            indices=np.arange(len(self.labels)),
            split_digest=np.array(self.split_digest),
        )
        return path


def log_prediction_artifacts(
    handle: RunHandle, class_names, predictions: dict[str, Predictions], history, best_epoch, state
) -> None:
    folder = handle.artifact_dir()
    test_labels, test_probs = predictions["test"].labels, predictions["test"].probs
    matrix = confusion(test_labels, test_probs)
    frame = pd.DataFrame(matrix, index=pd.Index(class_names, name="true"), columns=list(class_names))
    frame.to_csv(folder / "confusion_matrix.csv")
    title = f"{handle.job.describe()}"
    paths = [
        folder / "confusion_matrix.csv",
        plot_confusion_matrix(matrix, class_names, folder / "confusion_matrix.png", title=title),
        predictions["test"].save(folder / "test_probs.npz"),
        predictions["val"].save(folder / "val_probs.npz"),
        save_model(state, folder / "model.pt"),
    ]
    if history:
        paths.append(plot_curves(history, folder / "curves.png", title=title, best_epoch=best_epoch))
    handle.log_artifacts(paths)


def load_pretrained_backbone(handle: RunHandle) -> dict[str, torch.Tensor]:
    from ssl_hpc.train.pretrain_run import fetch_pretrained_backbone

    return fetch_pretrained_backbone(handle)
