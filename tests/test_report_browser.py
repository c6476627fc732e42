"""``results/<sweep>/report.html``: one self-contained page per sweep, checked as a file and in a browser.

The sweep is the hand-made store of ``test_aggregate`` (real MLflow, SQLite in tmp_path) with two seeds,
CAM figures and leakage counts logged by the runs, and class names that would be markup if not escaped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from matplotlib.figure import Figure
from mlflow import MlflowClient

import test_aggregate
from browser import chromium
from ssl_hpc.aggregate.report import REPORT, results_tables
from ssl_hpc.cli import aggregate_main
from test_aggregate import Store

SWEEP = "agg_report"
HOSTILE = ["<b>alpha</b>", "beta & <i>co</i>", 'gamma "quoted"']


def cam_figure(path: Path, title: str) -> Path:
    figure = Figure(figsize=(3, 1.5))
    figure.subplots().imshow([[0, 1], [1, 0]])
    figure.suptitle(title)
    figure.savefig(path, dpi=60)
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Aggregates once for the module; returns the results folder and the store's URI."""
    folder = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.setattr(test_aggregate, "CLASS_NAMES", json.dumps(HOSTILE))  # the tag the fine-tune stage writes
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        store = Store(uri, folder / "made", sweep=SWEEP)
        store.pretrain("simclr")
        store.pretrain("mocov2")
        for seed in (1, 2):
            for model, mode, signal in (
                ("supervised", "end_to_end", 1.2),
                ("simclr", "frozen", 1.0),
                ("simclr", "end_to_end", 1.1),
                ("mocov2", "frozen", 0.8),
                ("mocov2", "end_to_end", 0.9),
            ):
                for fraction in ("1.0", "0.25"):
                    run_id = store.finetune(model, mode, fraction, signal + 0.1 * seed, seed=seed)
                    store.tracker.log_metrics(
                        run_id,
                        {"duplicates_train_test": 3.0, "duplicates_train_test_images": 2.0, "duplicates_total": 3.0},
                    )
                    cams = folder / "cams" / run_id
                    cams.mkdir(parents=True)
                    for index in range(3):
                        path = cam_figure(cams / f"cam_class{index}_c{index}.png", f"{model}/{mode} class {index}")
                        store.tracker.log_artifact(run_id, path, "cam")
        sweep = {
            "name": SWEEP,
            "grid": {
                "dataset": ["bloodmnist"],
                "method": ["supervised", "simclr", "mocov2", "aim"],
                "finetune": ["frozen", "end_to_end"],
            },
            "methods": {"aim": {"backbone": ["vit_mini"]}},
            "aggregate": {
                "fusions": {"pair": ["simclr", "mocov2"], "with_aim": ["simclr", "aim"]},
                "rules": ["product", "vote", "mean"],
                "bootstrap_resamples": 100,
            },
        }
        path = folder / "sweep.yaml"
        path.write_text(yaml.safe_dump(sweep))
        root = folder / "project"
        root.mkdir()
        assert aggregate_main([str(path)], project_root=root) == 0
    finally:
        patch.undo()
    return {"results": root / "results" / SWEEP, "uri": uri}


def expected_tables(folder: Path) -> list[str]:
    """Every table of the results folder, counted here without the report's code: each Markdown table, and
    each CSV with no Markdown version (standard deviations are in the Markdown tables as "± sd")."""
    found = []
    for path in sorted(folder.glob("*.md")):
        separators = [line for line in path.read_text().splitlines() if re.fullmatch(r"\|[-:|]+\|", line)]
        found += [f"{path.name}#{n}" for n in range(1, len(separators) + 1)]
    found += [
        p.name for p in sorted(folder.glob("*.csv")) if not p.with_suffix(".md").exists() and "_std" not in p.name
    ]
    return found


def test_report_is_self_contained_escaped_and_holds_every_table(report):
    folder: Path = report["results"]
    page = (folder / REPORT).read_text(encoding="utf-8")
    # no network: no http(s) reference, no external stylesheet, script or font; images are data URIs
    assert not re.search(r"https?://", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    # every table of the folder, once
    tables = expected_tables(folder)
    assert {"summary.md#1", "table_bloodmnist_1.0.md#1", "table_bloodmnist_1.0.md#2", "skipped.csv"} <= set(tables)
    assert "leakage.csv" in tables and "paired_tests.csv" in tables and "runs.csv" in tables
    assert results_tables(folder) == tables
    assert sorted(re.findall(r'<table data-source="([^"]*)"', page)) == sorted(tables)
    # every figure of the folder and the runs' CAMs (reference + 2 best single models, 3 classes, 2 tables)
    figures = sorted(folder.glob("*.png"))
    names = {p.name for p in figures}
    assert {f"{kind}_bloodmnist_1.0.png" for kind in ("per_class", "fusions", "val_curves", "confusion")} <= names
    assert "accuracy_vs_labels_bloodmnist.png" in names
    cams = sorted((folder / "cams").rglob("*.png"))
    assert len(cams) == 2 * 3 * 3
    assert len(sources) == len(figures) + len(cams)
    # text from the runs is escaped: a class name never becomes markup
    assert "<b>alpha</b>" not in page and "&lt;b&gt;alpha&lt;/b&gt;" in page
    assert "<i>co</i>" not in page
    # what was skipped and why, the summary's AUC / F1 / kappa / cost, the leakage counts
    assert "with_aim" in page and "aim have no FINISHED run" in page
    for header in ("auc", "f1 macro", "kappa", "GPU-h", "CPU-h"):
        assert f"<th>{header}</th>" in page
    assert "train-test" in page
    # listed in the manifest and logged as an artifact of the aggregate run
    assert REPORT in json.loads((folder / ".aggregate-manifest.json").read_text())
    client = MlflowClient(report["uri"])
    experiment = client.get_experiment_by_name(SWEEP)
    (run,) = client.search_runs([experiment.experiment_id], "tags.stage = 'aggregate'")
    assert REPORT in {entry.path for entry in client.list_artifacts(run.info.run_id)}


def test_report_renders_in_browser(report, tmp_path):
    folder: Path = report["results"]
    with chromium() as driver:
        driver.get((folder / REPORT).as_uri())
        state = driver.execute_script(
            """
            const images = [...document.images];
            return {
              ready: document.readyState,
              images: images.length,
              broken: images.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
              tables: [...document.querySelectorAll('table[data-source]')].map(t => t.dataset.source),
              rows: [...document.querySelectorAll('table[data-source]')].map(t => t.rows.length),
              fetched: performance.getEntriesByType('resource').map(r => r.name)
                .filter(n => !n.startsWith('data:')),
              height: document.documentElement.scrollHeight,
            };
            """
        )
        assert state["ready"] == "complete"
        assert state["images"] > 0 and state["broken"] == []
        assert sorted(state["tables"]) == sorted(expected_tables(folder))
        assert all(rows >= 1 for rows in state["rows"])
        assert state["fetched"] == []  # nothing loaded from anywhere but the page itself
        # the per-class heat map is shown at a readable size (not squeezed into a thumbnail)
        width = driver.execute_script(
            "return [...document.images].find(i => i.alt.startsWith('per_class_')).getBoundingClientRect().width"
        )
        assert width >= 400
        driver.set_window_size(1400, min(state["height"] + 200, 16000))
        screenshot = tmp_path / "report.png"
        assert driver.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")
