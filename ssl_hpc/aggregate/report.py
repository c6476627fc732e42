"""``results/<sweep>/report.html``: the whole results folder in one file a reader can open anywhere.

Self-contained on purpose: the report is mailed, copied off the cluster and opened as an MLflow
artifact, where a relative link or a CDN would break. Images are embedded as base64 ``data:`` URIs and the
page has no external CSS, JavaScript or fonts, so it opens without a network.

It is built from the files the step has just written (not from its objects), so it holds every table
of the results folder: each Markdown table (the thesis-layout tables with their intervals and tests, the
summary) and each CSV without a Markdown version (skipped fusions, paired tests, leakage, runs)
becomes an HTML table carrying its file in ``data-source`` (:func:`results_tables` lists them). Every text
taken from runs or the sweep (model and class names, skip reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ssl_hpc.aggregate.findings import CAM_FOLDER, cam_grid

REPORT = "report.html"
TABLE_FIGURES = ("per_class", "fusions", "val_curves", "confusion")
# CSV files shown in their own sections, in this order, with what they are.
LISTS = (
    ("leakage.csv", "Leakage guard", "Near-duplicate images across splits, as the runs' leakage guard counted them."),
    ("skipped.csv", "What was skipped and why", "Fusions not computed (a member missing, predictions misaligned)."),
    ("paired_tests.csv", "Paired tests", "McNemar's test of every model against the reference, per seed."),
    ("runs.csv", "Runs behind every column", "The MLflow runs each table column was computed from."),
)
_CELL = re.compile(r"(?<!\\)\|")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { font-size: 1.05em; }
table.data { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
table.data th, table.data td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; }
table.data th { background: #f3f3f3; } table.data td:first-child { text-align: left; }
table.data td:first-child, table.data th:first-child { position: sticky; left: 0; background: #fafafa; }
.scroll { overflow-x: auto; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.8em; color: #555; }
nav ul { columns: 2; font-size: 0.9em; } pre { white-space: pre-wrap; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
.cams { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.cams figure { margin: 0; }
"""


def results_tables(folder: Path) -> list[str]:
    """The tables of a results folder, one entry per table: ``<file>`` for a CSV without a Markdown version
    (a ``_std.csv`` is shown in its Markdown table as "± sd"), ``<file>#<n>`` for the n-th table of a
    Markdown file. The report has one HTML table per entry, in its ``data-source``."""
    found = []
    for path in sorted(folder.glob("*.md")):
        count = sum(1 for line in path.read_text().splitlines() if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line.strip()))
        found += [f"{path.name}#{n}" for n in range(1, count + 1)]
    for path in sorted(folder.glob("*.csv")):
        if not path.with_suffix(".md").exists() and not path.name.endswith("_std.csv"):
            found.append(path.name)
    return found


def _frame_html(frame: pd.DataFrame, source: str) -> str:
    table = frame.to_html(index=False, escape=True, border=0, classes="data", na_rep="–", float_format="{:.4g}".format)
    return (
        '<div class="scroll">' + table.replace("<table ", f'<table data-source="{html.escape(source)}" ', 1) + "</div>"
    )


def _cells(line: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in _CELL.split(line.strip())[1:-1]]


def _inline(text: str) -> str:
    """Escaped text with Markdown's ``**bold**`` kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def markdown_html(path: Path) -> str:
    """The small Markdown the step writes (captions, paragraphs, lists, headings, tables) as HTML."""
    out, lines, index, tables = [], path.read_text().splitlines(), 0, 0
    while index < len(lines):
        line = lines[index].strip()
        if line.startswith("|"):
            block = []
            while index < len(lines) and lines[index].strip().startswith("|"):
                block.append(lines[index])
                index += 1
            tables += 1
            header, rows = _cells(block[0]), [_cells(row) for row in block[2:]]
            out.append(_frame_html(pd.DataFrame(rows, columns=header, dtype=object), f"{path.name}#{tables}"))
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 4)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line:
            out.append(f"<p>{_inline(line)}</p>")
        index += 1
    return "\n".join(out).replace("</ul>\n<ul>", "\n")


def _image(path: Path, caption: str, caption_first: bool = False) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = html.escape(caption)
    image, label = f'<img src="data:image/png;base64,{data}" alt="{alt}">', f"<figcaption>{alt}</figcaption>"
    return f"<figure>{label + image if caption_first else image + label}</figure>"


def _cams(folder: Path, suffix: str, class_names: Sequence[str]) -> str:
    grid = cam_grid(sorted((folder / CAM_FOLDER / suffix).glob("*.png")))
    if not grid:
        return ""
    out = [
        "<h3>Class activation maps</h3>",
        '<p class="note">The CAM figures the runs logged, per class (rows): the reference and the best single '
        "models side by side (columns; first seed). Each run draws its own correctly classified images "
        "(seeded) and its most confident mistakes, so the images can differ between models.</p>",
    ]
    for index, models in grid.items():
        name = class_names[index] if index < len(class_names) else str(index)
        out.append(f"<h4>class {index}: {html.escape(name)}</h4>")
        figures = [
            _image(p, f"{model}: CAMs of class {index} ({name})", caption_first=True) for model, p in models.items()
        ]
        out.append('<div class="cams">' + "".join(figures) + "</div>")
    return "\n".join(out)


def _class_names(folder: Path, stem: str) -> list[str]:
    """The class names the Markdown table shows beside ``class_<i>`` (``class_1 (name)``)."""
    names = {}
    for match in re.finditer(r"^\| class_(\d+) \((.*?)\) \|", (folder / f"{stem}.md").read_text(), re.MULTILINE):
        names[int(match.group(1))] = match.group(2).replace("\\|", "|")
    return [names.get(i, str(i)) for i in range(max(names, default=-1) + 1)]


def write_report(folder: Path, sweep_name: str, table_stems: Sequence[str]) -> Path:
    """Writes ``report.html`` into ``folder`` from the files already there; ``table_stems`` gives the order
    of the tables (the step's order: dataset, size, label budget from the largest, class weight)."""
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    shown_md, shown_png = {"notes.md"}, set()
    if (folder / "summary.md").exists():
        shown_md.add("summary.md")
        sections.append(("summary", "Summary over all tables", markdown_html(folder / "summary.md")))
    for stem in table_stems:
        suffix = stem.removeprefix("table_")
        body = [markdown_html(folder / f"{stem}.md")] if (folder / f"{stem}.md").exists() else []
        shown_md.add(f"{stem}.md")
        for prefix in TABLE_FIGURES:
            path = folder / f"{prefix}_{suffix}.png"
            if path.exists():
                shown_png.add(path.name)
                body.append(_image(path, path.name))
        body.append(_cams(folder, suffix, _class_names(folder, stem) if (folder / f"{stem}.md").exists() else []))
        sections.append((stem, f"Table {suffix}", "\n".join(body)))
    budgets = sorted(folder.glob("accuracy_vs_labels_*.png"))
    if budgets:
        shown_png.update(p.name for p in budgets)
        sections.append(("budgets", "Accuracy against the label budget", "\n".join(_image(p, p.name) for p in budgets)))
    for name, title, note in LISTS:
        path = folder / name
        if path.exists():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            body = f'<p class="note">{html.escape(note)}</p>'
            body += ("" if len(frame) else "<p>None.</p>") + _frame_html(frame, name)
            if name == "skipped.csv" and (folder / "notes.md").exists():
                body += markdown_html(folder / "notes.md")
            sections.append((name.removesuffix(".csv"), title, body))
    other = [p for p in sorted(folder.glob("*.md")) if p.name not in shown_md]
    listed = {name for name, _, _ in LISTS}
    other_csv = [
        p
        for p in sorted(folder.glob("*.csv"))
        if not p.with_suffix(".md").exists() and not p.name.endswith("_std.csv") and p.name not in listed
    ]
    other_png = [p for p in sorted(folder.glob("*.png")) if p.name not in shown_png]
    if other or other_csv or other_png:
        body = [markdown_html(p) for p in other]
        body += [_frame_html(pd.read_csv(p, dtype=str, keep_default_na=False), p.name) for p in other_csv]
        body += [_image(p, p.name) for p in other_png]
        sections.append(("other", "Other files", "\n".join(body)))
    if (folder / "fusions.json").exists():
        details = json.dumps(json.loads((folder / "fusions.json").read_text()), indent=1)
        folded = f"<details><summary>fusions.json</summary><pre>{html.escape(details)}</pre></details>"
        sections.append(("fusion-details", "What the fusion rules decided", folded))
    return _write(folder / REPORT, sweep_name, sections)


def _write(path: Path, sweep_name: str, sections: Sequence[tuple[str, str, str]]) -> Path:
    name = html.escape(sweep_name)
    toc = "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t, _ in sections)
    body = "\n".join(
        f'<section id="{html.escape(a)}"><h2>{html.escape(t)}</h2>\n{content}</section>' for a, t, content in sections
    )
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{name}: aggregation report</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>Sweep {name}: aggregation report</h1>\n"
        f'<p class="note">Written {time.strftime("%Y-%m-%d %H:%M:%S %Z")} by the aggregation step from the files '
        f"of results/{name}/ (tables as CSV, Markdown and LaTeX beside this file).</p>\n"
        f"<nav><ul>{toc}</ul></nav>\n{body}\n</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path
