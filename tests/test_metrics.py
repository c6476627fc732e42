"""Every metric against scikit-learn (and AUC against MedMNIST's own evaluator)."""

from __future__ import annotations

import numpy as np
import pytest
from medmnist.evaluator import getAUC
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

from ssl_hpc.evaluate.metrics import classification_metrics, confusion, medmnist_auc


def random_predictions(num_classes: int, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes)) + 1.5 * np.eye(num_classes)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


@pytest.mark.parametrize("num_classes,task", [(2, "binary-class"), (8, "multi-class"), (7, "multi-class")])
def test_metrics_match_sklearn_and_medmnist(num_classes, task):
    labels, probs = random_predictions(num_classes, seed=num_classes)
    predictions = probs.argmax(axis=1)
    metrics = classification_metrics(labels, probs)
    assert metrics["test_acc"] == pytest.approx(accuracy_score(labels, predictions))
    assert metrics["test_balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert metrics["test_f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert metrics["test_kappa"] == pytest.approx(cohen_kappa_score(labels, predictions))
    assert metrics["test_auc"] == pytest.approx(getAUC(labels, probs, task))
    matrix = confusion_matrix(labels, predictions)
    for c in range(num_classes):
        assert metrics[f"test_acc_class_{c}"] == pytest.approx(matrix[c, c] / matrix[c].sum())
    assert np.array_equal(confusion(labels, probs), matrix)


def test_mean_class_accuracy_is_mean_of_class_rows():
    labels, probs = random_predictions(5, seed=11)
    metrics = classification_metrics(labels, probs, prefix="")
    rows = [metrics[f"acc_class_{c}"] for c in range(5)]
    assert metrics["balanced_acc"] == pytest.approx(np.mean(rows))


def test_class_absent_from_labels_is_nan_and_ignored_in_the_mean():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    metrics = classification_metrics(labels, probs)
    assert np.isnan(metrics["test_acc_class_2"])
    assert metrics["test_balanced_acc"] == pytest.approx((0.5 + 0.5) / 2)
    assert confusion(labels, probs).shape == (3, 3)


def test_perfect_and_constant_predictions():
    labels = np.array([0, 1, 1, 0])
    perfect = np.eye(2)[labels]
    assert classification_metrics(labels, perfect)["test_auc"] == 1.0
    assert np.isnan(medmnist_auc(np.array([1, 1]), np.array([[0.3, 0.7], [0.4, 0.6]])))  # one class only
