"""The aggregation's figures. Rendering only: every number comes in computed.

- :func:`plot_class_bars`: per-class accuracy, the models side by side (as in the thesis).
- :func:`plot_val_curves`: validation accuracy against epochs, one line per model (mean over seeds).
- :func:`plot_confusion_grid`: a grid of confusion matrices, one panel per model, each drawn as the
  per-run figure is (:func:`ssl_hpc.evaluate.plots.draw_confusion_matrix`).
- :func:`plot_accuracy_vs_labels`: accuracy against the label budget, one line per model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ssl_hpc.evaluate.plots import draw_confusion_matrix  # noqa: E402

_MODE_STYLES = {"end_to_end": "-", "frozen": "--", "partial": "-.", "knn": ":"}
_HATCHES = {"--": "//", "-.": "..", ":": "xx"}


def line_styles(names: Sequence[str]) -> dict[str, tuple]:
    """name -> (colour, line style): one colour per model (or fusion rule), one style per fine-tune mode."""
    families: list[str] = []
    styles = {}
    palette = matplotlib.colormaps["tab10"]
    for name in names:
        family, _, mode = name.rpartition("/") if "/" in name else (name, "", "")
        if family not in families:
            families.append(family)
        styles[name] = (palette(families.index(family) % 10), _MODE_STYLES.get(mode, "-"))
    return styles


def _legend_outside(axes, count: int) -> None:
    axes.legend(
        fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncol=1 if count <= 18 else 2
    )


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path


def plot_class_bars(
    means: pd.DataFrame,
    path: Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
    stds: pd.DataFrame | None = None,
) -> Path:
    """``means``: rows ``class_<i>`` (percent), one column per model."""
    classes = list(means.index)
    models = list(means.columns)
    width = 0.8 / max(len(models), 1)
    positions = np.arange(len(classes))
    figure = Figure(figsize=(max(7.0, 0.3 * len(classes) * len(models) + 4.0), 4.2))
    axes = figure.subplots()
    styles = line_styles(models)
    for index, model in enumerate(models):
        errors = stds[model].to_numpy(dtype=float) if stds is not None else None
        if errors is not None and np.all(np.isnan(errors)):
            errors = None
        colour, style = styles[model]
        axes.bar(
            positions + (index - (len(models) - 1) / 2) * width,
            means[model].to_numpy(dtype=float),
            width,
            yerr=errors,
            label=model,
            color=colour,
            capsize=2 if errors is not None else 0,
            hatch=_HATCHES.get(style, ""),
            edgecolor="white",
            linewidth=0.5,
        )
    labels = [
        f"{row}\n{class_names[i]}" if class_names and i < len(class_names) else row for i, row in enumerate(classes)
    ]
    many = len(classes) > 4
    axes.set_xticks(positions, labels=labels, rotation=30 if many else 0, ha="right" if many else "center", fontsize=8)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 105)
    axes.set_title(title or "per-class accuracy (test)")
    _legend_outside(axes, len(models))
    return _save(figure, path)


def plot_val_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]],
    path: Path,
    title: str = "",
    metric: str = "val_acc",
) -> Path:
    """``curves``: model -> one (epochs, values) per seed; the line is the mean over seeds."""
    figure = Figure(figsize=(8.5, 4.2))
    axes = figure.subplots()
    styles = line_styles(list(curves))
    for model, per_seed in curves.items():
        colour, style = styles[model]
        series = [pd.Series(list(values), index=list(epochs)) for epochs, values in per_seed if len(epochs)]
        if not series:
            continue
        frame = pd.concat(series, axis=1).sort_index()
        mean = frame.mean(axis=1)
        axes.plot(
            mean.index, 100 * mean.to_numpy(), marker="o", markersize=3, label=model, color=colour, linestyle=style
        )
        if frame.shape[1] > 1:
            std = frame.std(axis=1, ddof=1).fillna(0)
            axes.fill_between(mean.index, 100 * (mean - std), 100 * (mean + std), alpha=0.15, color=colour)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(title or f"{metric} against epochs")
    _legend_outside(axes, len(curves))
    return _save(figure, path)


def plot_confusion_grid(
    matrices: Mapping[str, np.ndarray], class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One panel per model, up to four per row."""
    names = list(matrices)
    columns = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    side = max(3.2, 0.35 * len(class_names) + 1.8)
    figure = Figure(figsize=(side * columns, side * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names):
        draw_confusion_matrix(axis, matrices[name], class_names, name, compact=len(class_names) > 6)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


def plot_accuracy_vs_labels(
    lines: Mapping[str, Sequence[tuple[float, str, float, float]]],
    path: Path,
    title: str = "",
    ylabel: str = "accuracy (%)",
) -> Path:
    """``lines``: model -> points (number of labels, budget label, mean, std); x on a log scale."""
    figure = Figure(figsize=(8.5, 4.2))
    axes = figure.subplots()
    styles = line_styles(list(lines))
    ticks: dict[float, str] = {}
    for model, points in lines.items():
        points = sorted(points)
        if not points:
            continue
        x = [p[0] for p in points]
        y = [p[2] for p in points]
        errors = [0.0 if math.isnan(p[3]) else p[3] for p in points]
        colour, style = styles[model]
        axes.plot(x, y, marker="o" if ":" not in model else "s", linestyle=style, label=model, color=colour)
        if any(errors):
            axes.errorbar(x, y, yerr=errors, fmt="none", ecolor=colour, capsize=2)
        ticks.update({p[0]: f"{p[1]}\n({int(p[0])})" for p in points})
    if ticks:
        axes.set_xscale("log")
        axes.set_xticks(list(ticks), labels=list(ticks.values()), fontsize=7)
        axes.minorticks_off()
    axes.set_xlabel("label budget (number of labels)")
    axes.set_ylabel(ylabel)
    axes.set_title(title or "accuracy against label budget")
    _legend_outside(axes, len(lines))
    return _save(figure, path)
