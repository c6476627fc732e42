"""The fine-tune stage of a run: labels in, a classifier and its test metrics out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_hpc.data.augment import classification_augmentation
from ssl_hpc.data.class_weights import class_counts, class_weights
from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.data.subsets import label_subset
from ssl_hpc.evaluate.metrics import classification_metrics, confusion
from ssl_hpc.evaluate.plots import plot_confusion_matrix, plot_curves
from ssl_hpc.evaluate.predict import predict_logits, softmax_numpy
from ssl_hpc.models.factory import build_classifier
from ssl_hpc.runner import RunHandle, save_model
from ssl_hpc.train.finetune import ClassificationTask, class_weight_tensor, configure_trainable, count_trainable
from ssl_hpc.train.loop import fit


def run_finetune(handle: RunHandle, cache: DatasetCache) -> None:
    config = handle.job.config
    settings = config.finetune_settings
    assert settings is not None and config.finetune is not None
    device = handle.precision.device
    dataset = cache.get(config.dataset, config.size, download=config.data.download)

    labelled = label_subset(
        dataset.train.labels.numpy(), seed=config.seed, fraction=config.label_fraction,
        per_class=config.labels_per_class,
    )
    train = dataset.train.subset(torch.from_numpy(labelled)).to(device)
    val, test = dataset.val.to(device), dataset.test.to(device)
    counts = class_counts(train.labels.cpu().numpy(), dataset.num_classes)
    weights = class_weights(config.class_weight or "none", counts, beta=settings.effective_number_beta)

    backbone_state = load_pretrained_backbone(handle) if config.pretrain_key else None
    model = build_classifier(config, dataset.num_classes, dataset.channels, backbone_state)
    opened = configure_trainable(model, config.finetune, settings.trainable_last)
    model = handle.precision.prepare(model)
    handle.tracker.set_tags(handle.run_id, {
        "n_labels": str(len(train)),
        "trainable_params": str(count_trainable(model)),
        "class_names": ",".join(dataset.class_names),
    })
    if weights is not None:
        handle.tracker.set_tags(handle.run_id, {"class_weights": ",".join(f"{w:.4f}" for w in weights)})

    task = ClassificationTask(
        model, opened, val, class_weight_tensor(weights, device),
        classification_augmentation(settings.augment, dataset.image_size), handle.context.runtime.eval_batch_size,
    )
    result = fit(
        task, train, settings, seed=config.seed, workdir=handle.workdir, precision=handle.precision,
        select_by=settings.select_by, patience=settings.early_stopping_patience,
        on_epoch_end=handle.log_epoch, on_resume=handle.log_history, progress=handle.context.progress,
        description=f"{config.method}/{config.finetune} {handle.job.key}",
    )
    if result.best_state is not None:
        model.load_state_dict(result.best_state)

    eval_batch = handle.context.runtime.eval_batch_size
    test_probs = softmax_numpy(predict_logits(model, test.images, eval_batch, handle.precision.autocast))
    val_probs = softmax_numpy(predict_logits(model, val.images, eval_batch, handle.precision.autocast))
    test_labels, val_labels = test.labels.cpu().numpy(), val.labels.cpu().numpy()
    metrics = classification_metrics(test_labels, test_probs)
    metrics["best_epoch"] = float(result.best_epoch if result.best_epoch is not None else -1)
    metrics["train_seconds"] = sum(entry["epoch_seconds"] for entry in result.history)  # over every attempt
    handle.tracker.log_metrics(handle.run_id, metrics)
    predictions = {
        "test": Predictions(test_probs, test_labels, dataset.test.digest()),
        "val": Predictions(val_probs, val_labels, dataset.val.digest()),
    }
    log_prediction_artifacts(handle, dataset.class_names, predictions, result.history, result.best_epoch,
                             model.state_dict())


@dataclass(frozen=True)
class Predictions:
    """Class probabilities on one split, with the fingerprint of the examples they are for."""

    probs: np.ndarray
    labels: np.ndarray
    split_digest: str

    def save(self, path: Path) -> Path:
        np.savez_compressed(path, probs=self.probs, labels=self.labels, indices=np.arange(len(self.labels)),
                            split_digest=np.array(self.split_digest))
        return path


def log_prediction_artifacts(handle: RunHandle, class_names, predictions: dict[str, Predictions], history,
                             best_epoch, state) -> None:
    folder = handle.artifact_dir()
    test_labels, test_probs = predictions["test"].labels, predictions["test"].probs
    matrix = confusion(test_labels, test_probs)
    frame = pd.DataFrame(matrix, index=pd.Index(class_names, name="true"), columns=list(class_names))
    frame.to_csv(folder / "confusion_matrix.csv")
    title = f"{handle.job.describe()}"
    paths = [
        folder / "confusion_matrix.csv",
        plot_confusion_matrix(matrix, class_names, folder / "confusion_matrix.png", title=title),
        plot_curves(history, folder / "curves.png", title=title, best_epoch=best_epoch),
        predictions["test"].save(folder / "test_probs.npz"),
        predictions["val"].save(folder / "val_probs.npz"),
        save_model(state, folder / "model.pt"),
    ]
    handle.log_artifacts(paths)


def load_pretrained_backbone(handle: RunHandle) -> dict[str, torch.Tensor]:
    from ssl_hpc.train.pretrain_run import fetch_pretrained_backbone

    return fetch_pretrained_backbone(handle)
