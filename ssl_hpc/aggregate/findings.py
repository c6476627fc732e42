"""What the runs found besides their test metrics, gathered for the results folder and its report:

- :func:`leakage_frame`: the leakage guard's counts (near-duplicate images across splits, the runs'
  ``duplicates_*`` metrics), one row per dataset, size and split pair. Every run of a dataset logs the
  same counts, so the first run that has them speaks for the dataset; a test accuracy read without
  them may be inflated by test images that are also in train.
- :func:`collect_cams`: the CAM figures (``cam/cam_class<i>_<name>.png``) logged by the reference and the
  best single models of each table, copied under ``cams/<table>/`` so the report can set them side by
  side per class. A few models per table only (:data:`CAM_MODELS`): every download costs a request to the
  tracking server, and a reader compares the reference with the best, not 46 columns.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ssl_hpc.aggregate.collect import RunRecord, quiet_downloads
from ssl_hpc.aggregate.table import TableResult
from ssl_hpc.evaluate.tables import ACCURACY
from ssl_hpc.tracking import SweepTracker

log = logging.getLogger("ssl_hpc.aggregate")

CAM_MODELS = 3
CAM_FOLDER = "cams"
_DUPLICATES = re.compile(r"duplicates_([A-Za-z]+)_([A-Za-z]+)(?:_(images|label_conflicts))?")
_CAM_FIGURE = re.compile(r"cam_class(\d+)_.*\.png")


def leakage_frame(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per dataset, size and split pair: near-duplicate pairs, images of the second split with a
    near-duplicate in the first, pairs whose labels differ. Empty when no run logged the guard."""
    rows: dict[tuple, dict] = {}
    for record in records:
        for name, value in record.metrics.items():
            match = _DUPLICATES.fullmatch(name)
            if match is None or math.isnan(value):
                continue
            first, second, part = match.groups()
            key = (record.dataset, record.size, f"{first}-{second}")
            row = rows.setdefault(key, {"dataset": key[0], "size": key[1], "splits": key[2], "_run": record.run_id})
            if row["_run"] == record.run_id:  # one run speaks for its dataset
                row[part or "pairs"] = int(value)
    columns = ["dataset", "size", "splits", "pairs", "images", "label_conflicts"]
    frame = pd.DataFrame(list(rows.values()))
    return frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=columns)


def slug(text: str) -> str:
    """A file name part for a column name (``simclr_mocov2:product/frozen`` -> ``simclr_mocov2-product-frozen``)."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", text).strip("-") or "model"


def cam_models(table: TableResult) -> list[tuple[str, str]]:
    """(column name, run id of its first seed): the references, then the best other single models by test
    accuracy, :data:`CAM_MODELS` in all."""
    singles = [c for c in table.columns if c.kind != "fusion" and c.records]
    references = [c for c in singles if c.kind == "reference"]

    def accuracy(column) -> float:
        value = float(table.means.loc[ACCURACY, column.name])
        return -math.inf if math.isnan(value) else value

    others = sorted((c for c in singles if c.kind != "reference"), key=accuracy, reverse=True)
    chosen = (references + others)[:CAM_MODELS]
    return [(c.name, min(c.records, key=lambda r: r.seed).run_id) for c in chosen]


def collect_cams(tracker: SweepTracker, tables: Sequence[TableResult], folder: Path) -> list[Path]:
    """Copies the chosen models' CAM figures to ``cams/<table>/<model>__cam_class<i>_<name>.png``; a run
    without CAM figures (``cam.enabled: false``, a k-NN run) is simply left out."""
    written = []
    with tempfile.TemporaryDirectory(prefix="aggregate-cams-") as scratch, quiet_downloads():
        for table in tables:
            target = folder / CAM_FOLDER / table.stem.removeprefix("table_")
            for name, run_id in cam_models(table):
                try:
                    downloaded = tracker.download_artifact(run_id, "cam", Path(scratch) / run_id)
                except Exception as error:  # noqa: BLE001 - no CAMs logged: nothing to show for this model
                    log.info("run %s (%s): no CAM figures (%s)", run_id, name, str(error).splitlines()[:1])
                    continue
                for path in sorted(Path(downloaded).glob("cam_class*.png")):
                    if _CAM_FIGURE.fullmatch(path.name):
                        target.mkdir(parents=True, exist_ok=True)
                        written.append(Path(shutil.copyfile(path, target / f"{slug(name)}__{path.name}")))
    return written


def cam_grid(paths: Sequence[Path]) -> dict[int, dict[str, Path]]:
    """class index -> model slug -> figure, from the names :func:`collect_cams` gives."""
    grid: dict[int, dict[str, Path]] = {}
    for path in paths:
        model, _, figure = path.name.partition("__")
        match = _CAM_FIGURE.fullmatch(figure)
        if match:
            grid.setdefault(int(match.group(1)), {})[model] = path
    return dict(sorted(grid.items()))
