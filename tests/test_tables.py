"""The tables: the thesis's annex layout, mean class accuracy, and the CSV / Markdown / LaTeX writers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ssl_hpc.evaluate.metrics import mean_class_accuracy
from ssl_hpc.evaluate.tables import (
    ACCURACY,
    MEAN_CLASS_ACCURACY,
    ROW,
    Column,
    class_table,
    display_frame,
    latex,
    markdown,
    read_class_table,
    write_class_table,
    write_frame,
)

# The thesis's reference model (supervised ResNet-18) on BloodMNIST, Full labels: per-class accuracy (%).
THESIS_BLOOD_FULL_REFERENCE = [86.48, 98.88, 93.25, 86.53, 93.00, 86.97, 95.50, 100]
BLOOD_CLASSES = [
    "basophil",
    "eosinophil",
    "erythroblast",
    "immature granulocytes",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
]


def test_thesis_reference_column_bloodmnist_full():
    column = Column.from_values("reference", THESIS_BLOOD_FULL_REFERENCE, kind="reference")
    means, _ = class_table([column])
    assert list(means.index) == [f"class_{i}" for i in range(8)] + [ACCURACY, MEAN_CLASS_ACCURACY]
    assert means["reference"].iloc[:8].tolist() == THESIS_BLOOD_FULL_REFERENCE
    assert round(means.loc[MEAN_CLASS_ACCURACY, "reference"], 2) == 92.58
    assert round(mean_class_accuracy(THESIS_BLOOD_FULL_REFERENCE), 2) == 92.58
    assert math.isnan(means.loc[ACCURACY, "reference"])  # not given: shown as "–", never invented


def three_columns():
    rng = np.random.default_rng(0)
    return [
        Column.from_values("supervised", rng.uniform(50, 100, 4), 81.0, kind="reference"),
        Column.from_values("simclr/frozen", rng.uniform(50, 100, (3, 4)), [70.0, 72.0, 74.0]),
        Column.from_values("pair:product/frozen", rng.uniform(50, 100, 4), 75.5, kind="fusion"),
    ]


def test_layout_and_mean_class_accuracy_is_the_mean_of_the_class_rows(tmp_path):
    columns = three_columns()
    means, stds = class_table(columns)
    paths = write_class_table(means, stds, tmp_path, "table_x_1.0", caption="x", class_names=["a", "b", "c", "d"])
    csv = pd.read_csv(tmp_path / "table_x_1.0.csv")
    assert csv.columns[0] == ROW
    assert list(csv.columns[1:]) == ["supervised", "simclr/frozen", "pair:product/frozen"]
    assert csv[ROW].tolist() == ["class_0", "class_1", "class_2", "class_3", ACCURACY, MEAN_CLASS_ACCURACY]
    table = read_class_table(tmp_path / "table_x_1.0.csv")
    for name in table.columns:
        assert table.loc[MEAN_CLASS_ACCURACY, name] == pytest.approx(table.iloc[:4][name].mean())
    # several seeds: cells are means over seeds, with the standard deviation beside them
    simclr = columns[1]
    assert table["simclr/frozen"].iloc[:4].to_numpy() == pytest.approx(simclr.class_accuracy.mean(axis=0))
    assert table.loc[ACCURACY, "simclr/frozen"] == pytest.approx(72.0)
    std = read_class_table(tmp_path / "table_x_1.0_std.csv")
    assert std.loc[ACCURACY, "simclr/frozen"] == pytest.approx(2.0)
    assert std.loc[MEAN_CLASS_ACCURACY, "simclr/frozen"] == pytest.approx(
        np.std(simclr.class_accuracy.mean(axis=1), ddof=1)
    )
    assert math.isnan(std.loc[ACCURACY, "supervised"])  # one seed: no std
    assert {p.name for p in paths} == {"table_x_1.0.csv", "table_x_1.0_std.csv", "table_x_1.0.md", "table_x_1.0.tex"}


def test_absent_class_is_ignored_in_the_mean():
    column = Column.from_values("m", [80.0, float("nan"), 60.0], 70.0)
    means, _ = class_table([column])
    assert means.loc[MEAN_CLASS_ACCURACY, "m"] == pytest.approx(70.0)


def test_markdown_writer(tmp_path):
    means, stds = class_table(three_columns())
    write_class_table(means, stds, tmp_path, "t", caption="BloodMNIST, Full", class_names=["a", "b", "c", "d"])
    text = (tmp_path / "t.md").read_text()
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert lines[0] == "| row | supervised | simclr/frozen | pair:product/frozen |"
    assert lines[1] == "|:---|---:|---:|---:|"
    assert len(lines) == 2 + 6
    assert lines[2].startswith("| class_0 (a) | ")
    assert "72.00 ± 2.00" in text  # mean ± std over seeds
    assert "| accuracy | 81.00 | 72.00 ± 2.00 | 75.50 |" in text
    assert "**BloodMNIST, Full**" in text
    assert markdown(pd.DataFrame({"a|b": ["x|y"]}), index_label=None).splitlines()[0] == "| a\\|b |"


def test_latex_writer(tmp_path):
    means, stds = class_table(three_columns())
    write_class_table(
        means, stds, tmp_path, "t", caption="100% labels & class_weight", class_names=["a", "b", "c", "d"]
    )
    text = (tmp_path / "t.tex").read_text()
    assert text.startswith("% needs \\usepackage{booktabs}") and text.rstrip().endswith("\\end{table}")
    assert "\\begin{table}" in text and "resizebox" not in text  # a narrow table is not scaled
    assert "\\begin{tabular}{lrrr}" in text and "\\toprule" in text and "\\bottomrule" in text
    assert "row & supervised & simclr/frozen & pair:product/frozen \\\\" in text
    assert "mean\\_class\\_accuracy &" in text
    assert "72.00 $\\pm$ 2.00" in text
    assert "\\caption{100\\% labels \\& class\\_weight}" in text
    assert text.count("\\\\") == 1 + 6  # header + rows


def test_wide_latex_tables_are_scaled_and_p_values_typeset():
    frame = pd.DataFrame([["<0.001"] * 9], columns=[f"c{i}" for i in range(9)], index=["p"])
    text = latex(frame)
    assert "\\resizebox{\\linewidth}{!}{%" in text and "\\end{tabular}}" in text
    assert "$<$0.001" in text


def test_display_of_missing_values():
    shown = display_frame(pd.DataFrame({"m": [float("nan"), 1.234]}, index=["class_0", "accuracy"]))
    assert shown["m"].tolist() == ["–", "1.23"]
    assert "--" in latex(shown)


def test_flat_frame_writer(tmp_path):
    frame = pd.DataFrame({"model": ["a_b"], "auc": [0.91234]})
    paths = write_frame(frame, tmp_path, "summary", caption="s")
    assert [p.name for p in paths] == ["summary.csv", "summary.md", "summary.tex"]
    assert pd.read_csv(paths[0])["auc"].tolist() == [0.91234]
    assert "| a_b | 0.9123 |" in paths[1].read_text()
    assert "a\\_b & 0.9123" in paths[2].read_text() and "\\begin{tabular}{lr}" in paths[2].read_text()
    assert "|:---|---:|" in paths[1].read_text()  # text left, numbers right


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="repeated"):
        class_table([Column.from_values("a", [1.0]), Column.from_values("a", [2.0])])
    with pytest.raises(ValueError, match="classes"):
        class_table([Column.from_values("a", [1.0]), Column.from_values("b", [2.0, 3.0])])
    with pytest.raises(ValueError, match="seeds"):
        Column.from_values("a", [[1.0], [2.0]], [1.0, 2.0, 3.0])
