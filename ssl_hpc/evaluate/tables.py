"""The final tables, in the layout of the thesis's annex, and their CSV / Markdown / LaTeX writers.

A *class table* has one column per model (the reference model first, then every method x fine-tune
mode, then every fusion) and the rows ``class_<i>`` (per-class accuracy, %), ``accuracy`` (%) and
``mean_class_accuracy`` (%, the thesis's "Accuracy moyenne": the mean of the class rows). With
several seeds a cell is the mean over seeds; its standard deviation is kept beside it.

Everything here is a pure function of numbers: collecting them from MLflow is
:mod:`ssl_hpc.aggregate`'s job.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_hpc.evaluate.metrics import mean_class_accuracy

ROW = "row"
ACCURACY = "accuracy"
MEAN_CLASS_ACCURACY = "mean_class_accuracy"


def class_row(index: int) -> str:
    return f"class_{index}"


@dataclass(frozen=True)
class Column:
    """One model's column: per-seed values in percent.

    ``class_accuracy``: ``[S, K]``; ``accuracy``: ``[S]`` (NaN when unknown, e.g. a column rebuilt
    from a paper that only gives per-class accuracies).
    """

    name: str
    class_accuracy: np.ndarray
    accuracy: np.ndarray
    kind: str = "model"  # reference | model | fusion

    @classmethod
    def from_values(
        cls,
        name: str,
        class_accuracy: Sequence[float] | np.ndarray,
        accuracy: float | Sequence[float] = math.nan,
        kind: str = "model",
    ) -> Column:
        classes = np.atleast_2d(np.asarray(class_accuracy, dtype=np.float64))
        overall = np.atleast_1d(np.asarray(accuracy, dtype=np.float64))
        if overall.size == 1 and classes.shape[0] > 1:
            overall = np.full(classes.shape[0], overall.item())
        if overall.shape[0] != classes.shape[0]:
            raise ValueError(
                f"column {name!r}: {classes.shape[0]} seeds of class accuracies but {overall.shape[0]} accuracies"
            )
        return cls(name, classes, overall, kind)

    @property
    def n_seeds(self) -> int:
        return int(self.class_accuracy.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.class_accuracy.shape[1])

    def mean_class_accuracy_per_seed(self) -> np.ndarray:
        return np.array([mean_class_accuracy(row) for row in self.class_accuracy])


def _nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        count = np.sum(~np.isnan(values), axis=axis)
        total = np.nansum(values, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nanstd(values: np.ndarray, axis: int = 0) -> np.ndarray:
    count = np.sum(~np.isnan(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else np.full(count.shape, np.nan)
    return np.where(count > 1, std, np.nan)


def class_table(columns: Sequence[Column]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(means, standard deviations over seeds), both indexed by ``row`` with one column per model.

    The ``mean_class_accuracy`` row of the means is the mean of its class rows.
    """
    if not columns:
        raise ValueError("a table needs at least one column")
    num_classes = columns[0].num_classes
    names = [column.name for column in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"repeated column names: {names}")
    rows = [class_row(i) for i in range(num_classes)] + [ACCURACY, MEAN_CLASS_ACCURACY]
    means = pd.DataFrame(index=pd.Index(rows, name=ROW), columns=names, dtype=np.float64)
    stds = means.copy()
    for column in columns:
        if column.num_classes != num_classes:
            raise ValueError(f"column {column.name!r} has {column.num_classes} classes, the table {num_classes}")
        class_means = _nanmean(column.class_accuracy)
        means.loc[rows[:num_classes], column.name] = class_means
        means.loc[ACCURACY, column.name] = _nanmean(column.accuracy[:, None])[0]
        means.loc[MEAN_CLASS_ACCURACY, column.name] = mean_class_accuracy(class_means)
        stds.loc[rows[:num_classes], column.name] = _nanstd(column.class_accuracy)
        stds.loc[ACCURACY, column.name] = _nanstd(column.accuracy[:, None])[0]
        stds.loc[MEAN_CLASS_ACCURACY, column.name] = _nanstd(column.mean_class_accuracy_per_seed()[:, None])[0]
    return means, stds


# --------------------------------------------------------------------------- formatting


def format_cell(mean: float, std: float = math.nan, decimals: int = 2, plus_minus: str = "±") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean:.{decimals}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" {plus_minus} {std:.{decimals}f}"
    return text


def display_frame(
    means: pd.DataFrame, stds: pd.DataFrame | None = None, decimals: int = 2, plus_minus: str = "±"
) -> pd.DataFrame:
    """Strings "mean ± std" (or "mean" with one seed) for the Markdown and LaTeX versions."""
    shown = pd.DataFrame(index=means.index, columns=means.columns, dtype=object)
    for row in means.index:
        for column in means.columns:
            std = float(stds.loc[row, column]) if stds is not None else math.nan
            shown.loc[row, column] = format_cell(float(means.loc[row, column]), std, decimals, plus_minus)
    return shown


def markdown(frame: pd.DataFrame, index_label: str | None = ROW) -> str:
    """A GitHub-flavoured Markdown table of ``frame`` (cells as ``str``), the index first if labelled."""
    header = ([index_label] if index_label is not None else []) + [str(c) for c in frame.columns]
    align = [":---"] * (1 if index_label is not None else 0)
    align += ["---:" if all(_NUMERIC.match(_text(v)) for v in frame[c].tolist()) else ":---" for c in frame.columns]
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for label, row in frame.iterrows():
        cells = ([str(label)] if index_label is not None else []) + [_md(_text(v)) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_NUMERIC = re.compile(r"^$|^[-+–<\[\d.]")  # numbers, "mean ± std", "[low, high]", "<0.001", "–"


def _text(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def latex(frame: pd.DataFrame, caption: str = "", label: str = "", index_label: str | None = ROW) -> str:
    """A booktabs ``table`` of ``frame`` (cells as ``str``; "±" becomes ``$\\pm$``)."""
    columns = [str(c) for c in frame.columns]
    spec = ("l" if index_label is not None else "") + "".join(
        "r" if all(_NUMERIC.match(_text(v)) for v in frame[c].tolist()) else "l" for c in frame.columns
    )
    header = ([index_label] if index_label is not None else []) + columns
    wide = len(header) > 7  # scaled to the text width (needs \usepackage{graphicx})
    lines = [
        "% needs \\usepackage{booktabs}" + (" and \\usepackage{graphicx}" if wide else ""),
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
    ]
    lines += [r"\resizebox{\linewidth}{!}{%"] if wide else []
    lines += [
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for label_value, row in frame.iterrows():
        cells = ([latex_escape(label_value)] if index_label is not None else []) + [
            latex_escape(_text(v)).replace("±", r"$\pm$").replace("–", "--").replace("<", "$<$") for v in row.tolist()
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}" + ("}" if wide else "")]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_class_table(
    means: pd.DataFrame,
    stds: pd.DataFrame,
    folder: Path,
    stem: str,
    caption: str = "",
    class_names: Sequence[str] | None = None,
) -> list[Path]:
    """``<stem>.csv`` (means, first column ``row``), ``<stem>_std.csv``, ``<stem>.md`` and ``<stem>.tex``.

    The Markdown and LaTeX versions show "mean ± std" and the class names beside ``class_<i>``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, std_path = folder / f"{stem}.csv", folder / f"{stem}_std.csv"
    means.to_csv(csv_path, index_label=ROW, float_format="%.10g")
    stds.to_csv(std_path, index_label=ROW, float_format="%.10g")
    shown = display_frame(means, stds)
    if class_names:
        labels = {class_row(i): f"class_{i} ({name})" for i, name in enumerate(class_names)}
        shown = shown.rename(index=labels)
    md_path, tex_path = folder / f"{stem}.md", folder / f"{stem}.tex"
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + markdown(shown))
    tex_path.write_text(latex(shown, caption=caption, label=f"tab:{stem}"))
    return [csv_path, std_path, md_path, tex_path]


def read_class_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, index_col=ROW)


def write_frame(
    frame: pd.DataFrame, folder: Path, stem: str, shown: pd.DataFrame | None = None, caption: str = ""
) -> list[Path]:
    """A flat table (no meaningful index): CSV of the numbers, Markdown and LaTeX of ``shown`` (or of it)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{stem}.csv"
    frame.to_csv(csv_path, index=False, float_format="%.10g")
    shown = frame if shown is None else shown
    md_path, tex_path = folder / f"{stem}.md", folder / f"{stem}.tex"
    md_path.write_text((f"**{caption}**\n\n" if caption else "") + markdown(shown, index_label=None))
    tex_path.write_text(latex(shown, caption=caption, label=f"tab:{stem}", index_label=None))
    return [csv_path, md_path, tex_path]
