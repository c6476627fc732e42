"""Collecting: the sweep's FINISHED fine-tune runs, one per model cell, as :class:`RunRecord` objects.

Everything after this step works on these records, never on MLflow directly (only the plots read
metric histories). A record carries the run's tags and metrics, its test and validation predictions
(``test_probs.npz`` / ``val_probs.npz``, downloaded here) and its share of its pretraining run's time.

Should one model cell (model, backbone, fine-tune mode, dataset, size, label budget, class weight,
seed) have several FINISHED runs (a sweep edited after it ran), the one whose key belongs to the
current sweep wins, then the most recent; the others are reported.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run

from ssl_hpc.evaluate.fusion import PredictionSet
from ssl_hpc.tracking import FINISHED, SweepTracker

log = logging.getLogger("ssl_hpc.aggregate")

_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@dataclass
class RunRecord:
    """One FINISHED fine-tune run, as the aggregation needs it."""

    run_id: str
    key: str
    model: str
    method: str
    backbone: str
    dataset: str
    size: str
    label_fraction: str
    class_weight: str
    finetune: str
    seed: int
    metrics: dict[str, float]
    class_names: list[str]
    n_labels: float
    device: str
    pretrain_key: str | None
    end_time: int
    test: PredictionSet | None = None
    val: PredictionSet | None = None
    pretrain_seconds: float = 0.0  # this run's share of its pretraining run
    pretrain_device: str = ""

    @classmethod
    def from_run(cls, run: Run) -> RunRecord:
        tags = run.data.tags
        n_labels = tags.get("n_labels")
        return cls(
            run_id=run.info.run_id,
            key=tags.get("key", ""),
            model=tags.get("model") or tags.get("method", "?"),
            method=tags.get("method", "?"),
            backbone=tags.get("backbone", "?"),
            dataset=tags.get("dataset", "?"),
            size=tags.get("size", "28"),
            label_fraction=tags.get("label_fraction", "?"),
            class_weight=tags.get("class_weight", "none"),
            finetune=tags.get("finetune", "?"),
            seed=int(tags.get("seed", "0")),
            metrics=dict(run.data.metrics),
            class_names=parse_class_names(tags.get("class_names", "")),
            n_labels=float(n_labels) if n_labels not in (None, "") else math.nan,
            device=tags.get("device", "cpu"),
            pretrain_key=tags.get("pretrain_key") or None,
            end_time=int(run.info.end_time or run.info.start_time or 0),
        )

    @property
    def num_classes(self) -> int:
        indices = [int(m.group(1)) for name in self.metrics if (m := re.fullmatch(r"test_acc_class_(\d+)", name))]
        return max(indices) + 1 if indices else len(self.class_names)

    @property
    def cell(self) -> tuple:
        return (
            self.model,
            self.backbone,
            self.finetune,
            self.dataset,
            self.size,
            self.label_fraction,
            self.class_weight,
            self.seed,
        )

    @property
    def table_key(self) -> tuple[str, str, str, str]:
        return (self.dataset, self.size, self.label_fraction, self.class_weight)

    def hours(self) -> tuple[float, float]:
        """(GPU-hours, CPU-hours) of this run including its share of the pretraining."""
        gpu = cpu = 0.0
        for seconds, device in (
            (self.metrics.get("train_seconds", 0.0), self.device),
            (self.pretrain_seconds, self.pretrain_device or self.device),
        ):
            if device.lower() == "cpu":
                cpu += seconds / 3600
            else:
                gpu += seconds / 3600
        return gpu, cpu


def parse_class_names(tag: str) -> list[str]:
    """The ``class_names`` tag: a JSON list (not comma-joined: BloodMNIST's names contain commas)."""
    return [str(name) for name in json.loads(tag)] if tag else []


def finished_finetune_runs(tracker: SweepTracker) -> list[Run]:
    query = f"tags.stage = 'finetune' and tags.sweep = '{tracker.experiment}' and attributes.status = '{FINISHED}'"
    return tracker.search(query)


def deduplicate(records: Iterable[RunRecord], current_keys: set[str]) -> tuple[list[RunRecord], list[str]]:
    """One record per model cell: a key of the current sweep first, then the most recent."""
    by_cell: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_cell[record.cell].append(record)
    kept, notes = [], []
    for cell, group in by_cell.items():
        group.sort(key=lambda r: (r.key in current_keys, r.end_time), reverse=True)
        kept.append(group[0])
        if len(group) > 1:
            notes.append(
                f"{len(group)} FINISHED runs for {describe_cell(cell)}: using {group[0].run_id} "
                f"(key {group[0].key}), ignoring {', '.join(r.run_id for r in group[1:])}"
            )
        elif current_keys and group[0].key not in current_keys:
            notes.append(
                f"{describe_cell(cell)}: run {group[0].run_id} (key {group[0].key}) is from another "
                "version of the sweep (its settings differ from the YAML's now); it is in the tables"
            )
    return kept, notes


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """MLflow without its progress bars: one bar per downloaded file would flood the log."""
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = previous


def describe_cell(cell: tuple) -> str:
    model, backbone, finetune, dataset, size, fraction, weight, seed = cell
    return f"{model}/{finetune} {backbone} {dataset}@{size} labels={fraction} cw={weight} seed={seed}"


def load_predictions(tracker: SweepTracker, record: RunRecord, folder: Path) -> None:
    """Downloads the run's ``test_probs.npz`` and ``val_probs.npz`` (a missing one stays ``None``)."""
    for split in ("test", "val"):
        try:
            path = tracker.download_artifact(record.run_id, f"{split}_probs.npz", folder / record.run_id)
            setattr(record, split, PredictionSet.load(path))
        except Exception as error:  # noqa: BLE001 - a run without predictions still has its metrics
            log.warning(
                "run %s (%s): no usable %s_probs.npz (%s)",
                record.run_id,
                describe_cell(record.cell),
                split,
                str(error).splitlines()[0] if str(error) else type(error).__name__,
            )


def attribute_pretraining(tracker: SweepTracker, records: Sequence[RunRecord]) -> None:
    """Splits every pretraining run's ``train_seconds`` equally among the collected runs that used it."""
    users: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.pretrain_key:
            users[record.pretrain_key].append(record)
    if not users:
        return
    pretraining = tracker.runs_by_key("pretrain")
    for key, group in users.items():
        run = pretraining.get(key)
        if run is None:
            log.warning(
                "pretraining run %s (used by %d fine-tune runs) not found: its time is not counted", key, len(group)
            )
            continue
        seconds = float(run.data.metrics.get("train_seconds", 0.0))
        for record in group:
            record.pretrain_seconds = seconds / len(group)
            record.pretrain_device = run.data.tags.get("device", record.device)


def collect(
    tracker: SweepTracker, folder: Path, current_keys: set[str] = frozenset()
) -> tuple[list[RunRecord], list[str]]:
    """The sweep's FINISHED fine-tune runs, one per model cell, with predictions and pretraining shares."""
    records, notes = deduplicate((RunRecord.from_run(run) for run in finished_finetune_runs(tracker)), current_keys)
    for note in notes:
        log.warning(note)
    with quiet_downloads():
        for record in records:
            load_predictions(tracker, record, folder)
    attribute_pretraining(tracker, records)
    return records, notes
