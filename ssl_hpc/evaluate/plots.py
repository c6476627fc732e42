"""Figures logged with every run. Rendering only: no metric is computed here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np  # noqa: E402
from matplotlib.figure import Figure


def draw_confusion_matrix(
    axes, matrix: np.ndarray, class_names: Sequence[str], title: str = "", compact: bool = False
) -> None:
    """One confusion matrix on ``axes``: colours are row shares, each cell shows its count (and its
    row share unless ``compact``, for panels of a grid with many classes)."""
    matrix = np.asarray(matrix)
    shares = np.divide(matrix, np.maximum(matrix.sum(axis=1, keepdims=True), 1))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    font = 6 if compact else 8
    for (row, column), count in np.ndenumerate(matrix):
        colour = "white" if shares[row, column] > 0.5 else "black"
        text = f"{count}" if compact else f"{count}\n{100 * shares[row, column]:.1f}%"
        axes.text(column, row, text, ha="center", va="center", color=colour, fontsize=font)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right", fontsize=font)
    axes.set_yticks(ticks, labels=class_names, fontsize=font)
    axes.set_xlabel("predicted", fontsize=font + 1)
    axes.set_ylabel("true", fontsize=font + 1)
    axes.set_title(title, fontsize=font + 2)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str = "") -> Path:
    size = max(4.0, 0.6 * len(class_names) + 2.5)
    figure = Figure(figsize=(size, size))
    axes = figure.subplots()
    draw_confusion_matrix(axes, matrix, class_names, title or "confusion matrix (test)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_curves(
    history: Sequence[dict[str, float]], path: Path, title: str = "", best_epoch: int | None = None
) -> Path:
    epochs = [int(entry["epoch"]) for entry in history]
    losses = [name for name in ("train_loss", "val_loss") if any(name in entry for entry in history)]
    scores = [name for name in ("val_acc", "val_balanced_acc") if any(name in entry for entry in history)]
    panels = 2 if scores else 1
    figure = Figure(figsize=(5 * panels, 3.6))
    axes = figure.subplots(1, panels, squeeze=False)
    for name in losses:
        axes[0, 0].plot(epochs, [entry.get(name, np.nan) for entry in history], marker="o", label=name)
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_ylabel("loss")
    axes[0, 0].legend()
    if scores:
        for name in scores:
            axes[0, 1].plot(epochs, [entry.get(name, np.nan) for entry in history], marker="o", label=name)
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_ylabel("validation score")
        axes[0, 1].legend()
    if best_epoch is not None:
        for axis in axes[0]:
            axis.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path
