"""Classification metrics from predicted class probabilities.

AUC follows MedMNIST's own evaluator (``medmnist.evaluator.getAUC``): for two classes the AUC of
the positive-class score, otherwise the mean over classes of one-vs-rest AUCs. Numbers are then
comparable with the MedMNIST v2 paper. "Mean per-class accuracy" is the thesis's "Accuracy
moyenne", i.e. balanced accuracy (the mean of per-class recalls).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def medmnist_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return _safe_auc(labels == 1, probs[:, 1])
    scores = [_safe_auc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
    return float(np.mean(scores))


def _safe_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    if is_positive.all() or not is_positive.any():
        return float("nan")
    return float(roc_auc_score(is_positive, scores))


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (row-normalised diagonal); NaN for a class absent from the labels."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)


def mean_class_accuracy(class_accuracies: Sequence[float] | np.ndarray) -> float:
    """The mean of the per-class accuracies, classes absent from the labels (NaN) ignored: the thesis's
    "Accuracy moyenne", MLflow's ``test_balanced_acc``. NaN when no class is present."""
    values = np.asarray(class_accuracies, dtype=np.float64)
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan


def prediction_mean_class_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """:func:`mean_class_accuracy` of hard predictions."""
    matrix = confusion_matrix(labels, predictions, labels=np.arange(num_classes))
    return mean_class_accuracy(per_class_accuracy(matrix))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """All single-number metrics of one prediction set, named as MLflow shows them."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    num_classes = probs.shape[1]
    predictions = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, labels=np.arange(num_classes))
    class_accuracy = per_class_accuracy(matrix)
    metrics = {
        f"{prefix}acc": float((predictions == labels).mean()),
        f"{prefix}balanced_acc": mean_class_accuracy(class_accuracy),
        f"{prefix}auc": medmnist_auc(labels, probs),
        f"{prefix}f1_macro": float(
            f1_score(labels, predictions, labels=np.arange(num_classes), average="macro", zero_division=0)
        ),
        f"{prefix}kappa": float(cohen_kappa_score(labels, predictions, labels=np.arange(num_classes))),
    }
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predictions, labels=np.arange(num_classes), zero_division=0
    )
    for index, value in enumerate(class_accuracy):
        metrics[f"{prefix}acc_class_{index}"] = float(value)  # = recall; named as the thesis's tables
        metrics[f"{prefix}precision_class_{index}"] = float(precision[index])
        metrics[f"{prefix}f1_class_{index}"] = float(f1[index])
    return metrics


def confusion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    num_classes = np.asarray(probs).shape[1]
    return confusion_matrix(labels, np.asarray(probs).argmax(axis=1), labels=np.arange(num_classes))
