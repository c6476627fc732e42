"""The aggregation's figures stay readable however large the grid: legends of about a dozen entries at
most, whole epochs on the x axis, one heat map row per model. Drawn without MLflow, the figures caught
before they are saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_hpc.evaluate import aggregate_plots
from ssl_hpc.evaluate.aggregate_plots import (
    panel_groups,
    plot_accuracy_vs_labels,
    plot_class_heatmap,
    plot_val_curves,
)

METHODS = ["simclr", "mocov2", "aim", "mae", "rotnet", "byol", "dino", "barlow"]
MODES = ["end_to_end", "frozen"]
NAMES = ["supervised"] + [f"{m}/{mode}" for m in METHODS for mode in MODES]


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the plot functions save, kept instead of written."""
    figures = []

    def keep(figure, path: Path) -> Path:
        figure.canvas.draw()  # lays the ticks out as savefig would
        figures.append(figure)
        return path

    monkeypatch.setattr(aggregate_plots, "_save", keep)
    return figures


def legend_sizes(figure) -> list[int]:
    return [len(axes.get_legend().get_texts()) for axes in figure.axes if axes.get_legend() is not None]


@pytest.mark.parametrize("epochs", [1, 7])
def test_curves_of_many_models_split_into_panels_with_small_legends_and_whole_epochs(drawn, epochs):
    rng = np.random.default_rng(0)
    curves = {name: [(list(range(epochs)), list(rng.uniform(0.3, 0.9, epochs)))] for name in NAMES}
    plot_val_curves(curves, Path("curves.png"), "validation accuracy", reference="supervised")
    (figure,) = drawn
    assert len(figure.axes) == 2  # 8 methods: two panels of at most 6, the reference in both
    assert all(size <= 12 for size in legend_sizes(figure))
    for axes in figure.axes:
        assert sum(label.get_text() == "supervised (reference)" for label in axes.get_legend().get_texts()) == 1
        lo, hi = axes.get_xlim()
        ticks = [t for t in axes.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks)
        styles = {line.get_linestyle() for line in axes.get_lines() if line.get_label() != "supervised"}
        markers = {line.get_marker() for line in axes.get_lines()}
        assert {"-", "--"} <= styles and {"o", "s"} <= markers  # frozen and end_to_end told apart


def test_budget_plot_splits_like_the_curves_and_shows_sd_error_bars(drawn):
    lines = {name: [(75, "0.25", 60.0, 2.0), (300, "1.0", 70.0, 1.5)] for name in NAMES}
    plot_accuracy_vs_labels(lines, Path("budget.png"), "accuracy", reference="supervised")
    (figure,) = drawn
    assert len(figure.axes) == 2 and all(size <= 12 for size in legend_sizes(figure))
    assert any(axes.containers for axes in figure.axes)  # error bars drawn


def test_panel_groups_keep_modes_of_a_method_together():
    groups = panel_groups(NAMES, "supervised", per_panel=3)
    assert [len(g) for g in groups] == [7, 7, 5]
    assert all(g[0] == "supervised" for g in groups)
    assert groups[0][1:3] == ["simclr/end_to_end", "simclr/frozen"]


def test_class_heatmap_has_a_row_per_model_and_marks_the_reference(drawn):
    names = NAMES[:5]
    means = pd.DataFrame(
        np.full((4, len(names)), 50.0), index=["class_0", "class_1", "accuracy", "mean_class_accuracy"], columns=names
    )
    stds = means * 0 + 1.0
    plot_class_heatmap(means, Path("heat.png"), ["normal", "pneumonia"], "per class", stds, ["supervised"])
    (figure,) = drawn
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_yticklabels()]
    assert len(labels) == len(names) and labels[0].startswith("supervised") and "reference" in labels[0]
    assert [t.get_text() for t in axes.get_xticklabels()][-2:] == ["accuracy", "mean class acc."]
    assert any("±1.0" in text.get_text() for text in axes.texts)  # sd over seeds written in the cells
    assert axes.get_legend() is None
