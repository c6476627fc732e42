"""Columns: what one column of a table is, how it is named, and the columns of single models.

A table has one column per model (the reference model, then every other model per fine-tune mode)
and one per fusion (:mod:`ssl_hpc.aggregate.fusion_columns`); a column holds one
:class:`SeedOutcome` per seed. Naming is decided once over all the sweep's runs (:class:`Naming`):
the reference model is its ``model`` tag (``supervised``); every other model is
``<model>/<fine-tune mode>``; a fusion is ``<fusion>:<rule>/<fine-tune mode>``. ``@<backbone>``
follows the model (or rule) when a model name was trained with several backbones in the sweep.

Cells of single models are the runs' MLflow metrics (x 100 in the tables); their test predictions,
when present, are checked against the logged accuracy and kept for the statistics and plots.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ssl_hpc.aggregate.collect import RunRecord
from ssl_hpc.evaluate.metrics import classification_metrics, confusion
from ssl_hpc.evaluate.tables import Column

log = logging.getLogger("ssl_hpc.aggregate")

FINETUNE_ORDER = ("end_to_end", "frozen", "partial", "knn")


@dataclass
class SeedOutcome:
    """One seed of one column: test metrics (fractions) and, when known, per-example predictions."""

    seed: int
    metrics: dict[str, float]
    run_ids: list[str]
    n_labels: float
    gpu_hours: float
    cpu_hours: float
    labels: np.ndarray | None = None
    predictions: np.ndarray | None = None
    digest: str = ""
    matrix: np.ndarray | None = None


@dataclass
class ColumnData:
    name: str
    kind: str  # reference | model | fusion
    backbone: str
    finetune: str
    outcomes: dict[int, SeedOutcome] = field(default_factory=dict)
    records: list[RunRecord] = field(default_factory=list)  # single models only
    details: dict[int, dict] = field(default_factory=dict)  # fusions: what the rule decided, per seed

    def column(self, num_classes: int) -> Column:
        seeds = sorted(self.outcomes)
        classes = [
            [100 * self.outcomes[s].metrics.get(f"test_acc_class_{i}", math.nan) for i in range(num_classes)]
            for s in seeds
        ]
        accuracy = [100 * self.outcomes[s].metrics.get("test_acc", math.nan) for s in seeds]
        return Column.from_values(self.name, classes, accuracy, kind=self.kind)

    def values(self, metric: str) -> list[float]:
        return [self.outcomes[s].metrics.get(f"test_{metric}", math.nan) for s in sorted(self.outcomes)]


@dataclass(frozen=True)
class Naming:
    """How names are disambiguated in this sweep (decided once over all runs)."""

    multi_backbone_models: frozenset[str]
    multi_size_datasets: frozenset[str]
    multi_class_weight: bool
    reference_multi_mode: bool

    @classmethod
    def of(cls, records: Sequence[RunRecord], reference: str) -> Naming:
        backbones, sizes = defaultdict(set), defaultdict(set)
        for record in records:
            backbones[record.model].add(record.backbone)
            sizes[record.dataset].add(record.size)
        return cls(
            frozenset(model for model, found in backbones.items() if len(found) > 1),
            frozenset(dataset for dataset, found in sizes.items() if len(found) > 1),
            len({record.class_weight for record in records}) > 1,
            len({record.finetune for record in records if record.method == reference}) > 1,
        )

    def model_column(self, record: RunRecord, reference: str) -> str:
        name = record.model + (f"@{record.backbone}" if record.model in self.multi_backbone_models else "")
        if record.method == reference and not self.reference_multi_mode:
            return name
        return f"{name}/{record.finetune}"

    def table_suffix(self, dataset: str, size: str, fraction: str, class_weight: str) -> str:
        text = dataset + (f"_{size}px" if dataset in self.multi_size_datasets else "") + f"_{fraction}"
        return text + (f"_{class_weight}" if self.multi_class_weight else "")

    def series_suffix(self, dataset: str, size: str, class_weight: str) -> str:
        text = dataset + (f"_{size}px" if dataset in self.multi_size_datasets else "")
        return text + (f"_{class_weight}" if self.multi_class_weight else "")


def finetune_rank(mode: str) -> int:
    """Sort key of a fine-tune mode: :data:`FINETUNE_ORDER`, unknown modes last."""
    return FINETUNE_ORDER.index(mode) if mode in FINETUNE_ORDER else len(FINETUNE_ORDER)


def outcome_of_run(record: RunRecord) -> SeedOutcome:
    gpu, cpu = record.hours()
    outcome = SeedOutcome(record.seed, dict(record.metrics), [record.run_id], record.n_labels, gpu, cpu)
    if record.test is not None:
        outcome.labels = record.test.labels
        outcome.predictions = record.test.predictions
        outcome.digest = record.test.split_digest
        outcome.matrix = confusion(record.test.labels, record.test.probs)
        recomputed = classification_metrics(record.test.labels, record.test.probs)["test_acc"]
        logged = record.metrics.get("test_acc", math.nan)
        if not math.isclose(recomputed, logged, abs_tol=1e-6):
            log.warning(
                "run %s: test_acc %.6f in MLflow but %.6f from test_probs.npz", record.run_id, logged, recomputed
            )
    return outcome


def single_columns(
    records: Sequence[RunRecord], naming: Naming, reference: str, model_order: Sequence[str]
) -> list[ColumnData]:
    columns: dict[str, ColumnData] = {}
    for record in records:
        name = naming.model_column(record, reference)
        kind = "reference" if record.method == reference else "model"
        column = columns.setdefault(name, ColumnData(name, kind, record.backbone, record.finetune))
        column.outcomes[record.seed] = outcome_of_run(record)
        column.records.append(record)

    def order(column: ColumnData):
        model = column.records[0].model
        position = model_order.index(model) if model in model_order else len(model_order)
        return (column.kind != "reference", position, model, column.backbone, finetune_rank(column.finetune))

    return sorted(columns.values(), key=order)
