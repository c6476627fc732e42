"""The aggregation's figures. Rendering only: every number comes in computed.

They must stay readable at their saved size however large the grid (a sweep of five methods, two
fine-tune modes and three fusions of six rules has 46 table columns), so nothing here draws one bar or
one legend entry per column:

- :func:`plot_class_heatmap`: per-class accuracy, one row per model and one column per class (then
  accuracy and mean class accuracy), values written in the cells, the reference row marked.
- :func:`plot_fusion_heatmap`: fusions (rows) against their rules (columns), accuracy and mean class
  accuracy side by side, beside the best single model of the same fine-tune mode.
- :func:`plot_val_curves`: validation accuracy against epochs, colour per method and line style per
  fine-tune mode, integer epoch ticks; more methods than fit one legend become small multiples.
- :func:`plot_confusion_grid`: a few confusion matrices side by side (the reference and the best models),
  each drawn as the per-run figure is (:func:`ssl_hpc.evaluate.plots.draw_confusion_matrix`).
- :func:`plot_accuracy_vs_labels`: accuracy against the label budget, split into panels like the curves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from ssl_hpc.evaluate.plots import draw_confusion_matrix

_MODE_STYLES = {"end_to_end": "-", "frozen": "--", "partial": "-.", "knn": ":"}
# Markers tell the modes apart too, where a line has one point (a one-epoch sweep) and its style is invisible.
_MODE_MARKERS = {"end_to_end": "o", "frozen": "s", "partial": "^", "knn": "x"}
# Methods per panel of the curves and budget plots: with up to four fine-tune modes, a legend of at most
# 6 colours + 4 line styles (+ the reference) stays within about a dozen entries.
FAMILIES_PER_PANEL = 6
REFERENCE_COLOUR = "black"


def split_name(name: str) -> tuple[str, str]:
    """``"simclr/frozen"`` -> ``("simclr", "frozen")``; a bare name (the reference) has no mode."""
    family, _, mode = name.rpartition("/") if "/" in name else (name, "", "")
    return family, mode


def line_styles(names: Sequence[str], reference: str | None = None) -> dict[str, tuple]:
    """name -> (colour, line style): one colour per model (or fusion rule), one style per fine-tune mode;
    the reference is black, so that it reads as the baseline in every panel."""
    families: list[str] = []
    for name in names:
        if split_name(name)[0] not in families and name != reference:
            families.append(split_name(name)[0])
    palette = matplotlib.colormaps["tab10" if len(families) <= 10 else "tab20"]
    styles = {}
    for name in names:
        family, mode = split_name(name)
        colour = REFERENCE_COLOUR if name == reference else palette(families.index(family) % palette.N)
        styles[name] = (colour, _MODE_STYLES.get(mode, "-"))
    return styles


def panel_groups(
    names: Sequence[str], reference: str | None = None, per_panel: int = FAMILIES_PER_PANEL
) -> list[list[str]]:
    """Names split into panels of at most ``per_panel`` methods (all fine-tune modes of a method stay
    together); the reference joins every panel as the common baseline."""
    families: dict[str, list[str]] = {}
    for name in names:
        if name != reference:
            families.setdefault(split_name(name)[0], []).append(name)
    chunks = list(families.values())
    pinned = [reference] if reference in names else []
    if not chunks:
        return [pinned] if pinned else []
    groups = []
    for start in range(0, len(chunks), per_panel):
        groups.append(pinned + [name for chunk in chunks[start : start + per_panel] for name in chunk])
    return groups


def _legend(axes, names: Sequence[str], styles: Mapping[str, tuple], reference: str | None) -> None:
    """Colours name the methods, line styles the fine-tune modes: entries = methods + modes, not lines."""
    handles, seen = [], set()
    for name in names:
        family, _ = split_name(name)
        label = f"{name} (reference)" if name == reference else family
        if label in seen:
            continue
        seen.add(label)
        handles.append(Line2D([], [], color=styles[name][0], linestyle=styles[name][1] if name == reference else "-"))
        handles[-1].set_label(label)
    modes = sorted({split_name(n)[1] for n in names if n != reference and split_name(n)[1]})
    for mode in modes:
        style, marker = _MODE_STYLES.get(mode, "-"), _MODE_MARKERS.get(mode, "o")
        handles.append(Line2D([], [], color="grey", linestyle=style, marker=marker, markersize=4, label=mode))
    axes.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(figure: Figure, path: Path, title_room: float = 0.0) -> Path:
    """``title_room``: inches kept free at the top for the suptitle, where tight_layout alone lets it
    overlap the panels' own titles (fixed-aspect panels, as the confusion matrices)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout(rect=(0, 0, 1, 1 - title_room / figure.get_figheight()))
    figure.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.15)  # long tick labels are never clipped
    return path


def _annotate(axes, values: np.ndarray, stds: np.ndarray | None, decimals: int = 1, fontsize: float = 7) -> None:
    for (row, column), value in np.ndenumerate(values):
        if math.isnan(value):
            axes.text(column, row, "–", ha="center", va="center", fontsize=fontsize, color="grey")
            continue
        text = f"{value:.{decimals}f}"
        if stds is not None and not math.isnan(stds[row, column]):
            text += f"\n±{stds[row, column]:.{decimals}f}"
        colour = "white" if value < 55 else "black"  # viridis: dark below the middle
        axes.text(column, row, text, ha="center", va="center", fontsize=fontsize, color=colour)


def _has_spread(stds: pd.DataFrame | None) -> bool:
    return stds is not None and bool(np.any(~np.isnan(stds.to_numpy(dtype=float))))


def plot_class_heatmap(
    means: pd.DataFrame,
    path: Path,
    class_names: Sequence[str] | None = None,
    title: str = "",
    stds: pd.DataFrame | None = None,
    references: Sequence[str] = (),
) -> Path:
    """``means``/``stds``: rows ``class_<i>``, ``accuracy``, ``mean_class_accuracy`` (percent), one column per
    model; drawn transposed (a row per model) so that the figure grows downwards with the grid. The rows of
    ``references`` are outlined and labelled, since every other row is read against them."""
    values = means.T.to_numpy(dtype=float)
    spreads = stds.T.to_numpy(dtype=float) if _has_spread(stds) else None
    models = [str(m) for m in means.columns]
    num_classes = values.shape[1] - 2
    labels = [
        f"{i}: {class_names[i]}" if class_names and i < len(class_names) else f"class {i}" for i in range(num_classes)
    ] + ["accuracy", "mean class acc."]
    row_height = 0.42 if spreads is not None else 0.3
    width = min(2.8 + 0.85 * len(labels) + 0.06 * max(len(m) for m in models), 24)
    figure = Figure(figsize=(width, 1.8 + row_height * len(models)))
    axes = figure.subplots()
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    _annotate(axes, values, spreads, fontsize=7 if len(labels) <= 12 else 6)
    axes.axvline(num_classes - 0.5, color="white", linewidth=3)
    long_labels = max(len(label) for label in labels) > 10
    axes.set_xticks(
        range(len(labels)), labels=labels, rotation=30 if long_labels else 0, ha="right" if long_labels else "center"
    )
    axes.tick_params(axis="x", labelsize=8)
    shown = [f"{m}  ◀ reference" if m in references else m for m in models]
    axes.set_yticks(range(len(models)), labels=shown, fontsize=8)
    for row in [i for i, m in enumerate(models) if m in references]:
        axes.get_yticklabels()[row].set_fontweight("bold")
        axes.add_patch(
            Rectangle((-0.5, row - 0.5), len(labels), 1, fill=False, edgecolor="red", linewidth=2, clip_on=False)
        )
    figure.colorbar(image, ax=axes, label="test accuracy (%)", fraction=0.04, pad=0.02)
    axes.set_title(title or "per-class test accuracy (%)", fontsize=9)
    return _save(figure, path)


def plot_fusion_heatmap(
    accuracy: pd.DataFrame,
    mean_class: pd.DataFrame,
    path: Path,
    title: str = "",
    accuracy_std: pd.DataFrame | None = None,
    mean_class_std: pd.DataFrame | None = None,
) -> Path:
    """Two heat maps (accuracy, mean class accuracy; percent): rows = fusion (and fine-tune mode), columns
    = rules; a last column, when given, is the best single model of the row's mode (a fusion is worth its
    cost only above it), set apart by a white line."""
    rows, rules = list(accuracy.index), [str(c) for c in accuracy.columns]
    spread = _has_spread(accuracy_std) or _has_spread(mean_class_std)
    width = 1.2 + 0.7 * len(rules) + 0.07 * max(len(str(r)) for r in rows)
    height = max(3.4, 2.2 + (0.42 if spread else 0.32) * len(rows))  # rotated rule names need ~1.5 in
    figure = Figure(figsize=(min(2 * width, 26), height))
    panels = figure.subplots(1, 2, squeeze=False)[0]
    for axes, frame, stds, name in (
        (panels[0], accuracy, accuracy_std, "accuracy (%)"),
        (panels[1], mean_class, mean_class_std, "mean class accuracy (%)"),
    ):
        values = frame.to_numpy(dtype=float)
        axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        _annotate(axes, values, stds.to_numpy(dtype=float) if _has_spread(stds) else None)
        if rules and rules[-1].startswith("best single"):
            axes.axvline(len(rules) - 1.5, color="white", linewidth=3)
        axes.set_xticks(range(len(rules)), labels=rules, rotation=30, ha="right", fontsize=8)
        axes.set_yticks(range(len(rows)), labels=[str(r) for r in rows], fontsize=8)
        axes.set_title(name, fontsize=9)
    figure.suptitle(title or "fusions by rule (test)", fontsize=10)
    return _save(figure, path)


def plot_val_curves(
    curves: Mapping[str, Sequence[tuple[Sequence[int], Sequence[float]]]],
    path: Path,
    title: str = "",
    metric: str = "val_acc",
    reference: str | None = None,
) -> Path:
    """``curves``: model -> one (epochs, values) per seed; the line is the mean over seeds, the band ± sd.
    More than :data:`FAMILIES_PER_PANEL` methods become stacked panels sharing the y axis."""
    names = [name for name, per_seed in curves.items() if any(len(epochs) for epochs, _ in per_seed)]
    groups = panel_groups(names, reference) or [[]]
    styles = line_styles(names, reference)
    figure = Figure(figsize=(8.5, 0.6 + 3.4 * len(groups)))
    axes_list = figure.subplots(len(groups), 1, squeeze=False, sharey=True)[:, 0]
    epochs_seen: set[int] = set()
    for axes, group in zip(axes_list, groups):
        for model in group:
            colour, style = styles[model]
            series = [pd.Series(list(v), index=list(e)) for e, v in curves[model] if len(e)]
            frame = pd.concat(series, axis=1).sort_index()
            mean = frame.mean(axis=1)
            epochs_seen.update(int(e) for e in mean.index)
            axes.plot(
                mean.index,
                100 * mean.to_numpy(),
                marker=_MODE_MARKERS.get(split_name(model)[1], "o"),
                markersize=4,
                color=colour,
                linestyle=style,
                linewidth=2.2 if model == reference else 1.4,
            )
            if frame.shape[1] > 1:
                std = frame.std(axis=1, ddof=1).fillna(0)
                axes.fill_between(mean.index, 100 * (mean - std), 100 * (mean + std), alpha=0.15, color=colour)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(f"{metric} (%)")
        _legend(axes, group, styles, reference)
    if len(epochs_seen) == 1:  # one epoch: one tick (MaxNLocator would fill a short axis with fractions)
        only = next(iter(epochs_seen))
        for axes in axes_list:
            axes.set_xlim(only - 0.5, only + 0.5)
            axes.set_xticks([only])
    axes_list[-1].set_xlabel("epoch (0-based)")
    figure.suptitle(title or f"{metric} against epochs", fontsize=10)
    return _save(figure, path)


def plot_confusion_grid(
    matrices: Mapping[str, np.ndarray], class_names: Sequence[str], path: Path, title: str = ""
) -> Path:
    """One panel per entry of ``matrices`` (keys are the panel titles), up to four per row."""
    names = list(matrices)
    columns = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    side = max(4.2, 0.35 * len(class_names) + 2.4)
    figure = Figure(figsize=(side * columns, side * rows + 0.6))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat[len(names) :]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names):
        draw_confusion_matrix(axis, matrices[name], class_names, name, compact=len(class_names) > 6)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save(figure, path, title_room=0.45 if title else 0.0)


def plot_accuracy_vs_labels(
    lines: Mapping[str, Sequence[tuple[float, str, float, float]]],
    path: Path,
    title: str = "",
    ylabel: str = "accuracy (%)",
    reference: str | None = None,
) -> Path:
    """``lines``: model -> points (number of labels, budget label, mean, sd); x on a log scale, error bars
    (sd over seeds) where there are several seeds; panels as :func:`plot_val_curves`."""
    names = [name for name, points in lines.items() if points]
    groups = panel_groups(names, reference) or [[]]
    styles = line_styles(names, reference)
    figure = Figure(figsize=(8.5, 0.6 + 3.4 * len(groups)))
    axes_list = figure.subplots(len(groups), 1, squeeze=False, sharey=True)[:, 0]
    for axes, group in zip(axes_list, groups):
        ticks: dict[float, str] = {}
        for model in group:
            points = sorted(lines[model])
            x, y = [p[0] for p in points], [p[2] for p in points]
            errors = [0.0 if math.isnan(p[3]) else p[3] for p in points]
            colour, style = styles[model]
            marker = _MODE_MARKERS.get(split_name(model)[1], "o")
            axes.plot(x, y, marker=marker, linestyle=style, color=colour, linewidth=2.2 if model == reference else 1.4)
            if any(errors):
                axes.errorbar(x, y, yerr=errors, fmt="none", ecolor=colour, capsize=2)
            ticks.update({p[0]: f"{p[1]}\n({int(p[0])})" for p in points})
        if ticks:
            axes.set_xscale("log")
            axes.set_xticks(list(ticks), labels=list(ticks.values()), fontsize=7)
            axes.minorticks_off()
        axes.set_ylabel(ylabel)
        _legend(axes, group, styles, reference)
    axes_list[-1].set_xlabel("label budget (number of labels)")
    figure.suptitle(title or "accuracy against label budget", fontsize=10)
    return _save(figure, path)
