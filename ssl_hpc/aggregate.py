"""The aggregation step: a sweep's finished fine-tune runs become fusions, tables, statistics and plots.

``python launch/aggregate.py SWEEP.yaml [--set dotted.key=value ...]`` (or :func:`aggregate_sweep`
as the last job of a sweep):

1. **Collect** the sweep's FINISHED fine-tune runs (``stage=finetune``) from MLflow with their
   ``test_probs.npz`` / ``val_probs.npz``. Should one model cell (model, backbone, fine-tune mode,
   dataset, size, label budget, class weight, seed) have several FINISHED runs (a sweep edited after
   it ran), the one whose key belongs to the current sweep wins, then the most recent; the others are
   reported.
2. **Fuse** the members of every fusion of ``aggregate.fusions`` with every rule of
   ``aggregate.rules``, per group of runs with the same dataset, size, label budget, class weight,
   fine-tune mode and seed. A group missing a member, or whose members' predictions are not for the same
   examples in the same order, is skipped and listed (``skipped.csv``, the log, the command's output):
   a partial or misaligned set is never fused.
3. **Tables** per dataset x label budget (``table_<dataset>_<label_fraction>.csv`` and ``.md`` /
   ``.tex``; ``_<size>px`` after the dataset when the sweep has several sizes of it, ``_<class weight>``
   at the end when it has several class-weight rules), a summary table, statistics over seeds and the
   paired tests against the reference model.
4. **Plots** (PNG) beside them, and everything as artifacts of one ``aggregate`` MLflow run per sweep
   (tags ``stage=aggregate``, ``key=aggregate``), reused by every re-run.

Column names: the reference model is its ``model`` tag (``supervised``); every other model is
``<model>/<fine-tune mode>``; a fusion is ``<fusion>:<rule>/<fine-tune mode>``. ``@<backbone>``
follows the model (or rule) when a model name was trained with several backbones in the sweep.

Cells of single models are the runs' MLflow metrics x 100 (mean over seeds); fusion cells are
computed from the fused test probabilities with :func:`classification_metrics`, the same function
the runs use. GPU-hours: a fine-tune run's ``train_seconds`` plus an equal share of its pretraining
run's ``train_seconds`` (the pretraining time divided by the number of collected fine-tune runs that
used it, so that every pretraining run is counted exactly once over the single-model rows of the
summary); runs whose ``device`` tag is ``cpu`` count as CPU-hours instead. A column shows the mean
per seed; a fusion costs the sum of its members (shares included).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Run

from ssl_hpc.config import AggregateSettings, ConfigError, SweepConfig, load_sweep
from ssl_hpc.evaluate import stats
from ssl_hpc.evaluate.aggregate_plots import (
    plot_accuracy_vs_labels,
    plot_class_bars,
    plot_confusion_grid,
    plot_val_curves,
)
from ssl_hpc.evaluate.fusion import FusionMismatchError, Member, PredictionSet, fuse
from ssl_hpc.evaluate.metrics import classification_metrics, confusion
from ssl_hpc.evaluate.tables import (
    ACCURACY,
    MEAN_CLASS_ACCURACY,
    Column,
    class_table,
    format_cell,
    markdown,
    write_class_table,
    write_frame,
)
from ssl_hpc.files import exclusive_lock, ordinary_folder_mode
from ssl_hpc.tracking import FINISHED, SweepTracker, git_state, pick_run, resolve_tracking_uri

log = logging.getLogger("ssl_hpc.aggregate")

STAGE = "aggregate"
AGGREGATE_KEY = "aggregate"
FINETUNE_ORDER = ("end_to_end", "frozen", "partial", "knn")
SUMMARY_METRICS = ("auc", "f1_macro", "kappa")
_PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


class AggregationError(RuntimeError):
    """Nothing to aggregate (no FINISHED fine-tune runs, no store...); the message says why."""


# --------------------------------------------------------------------------- collecting


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
    """The ``class_names`` tag: a JSON list (BloodMNIST's names contain commas); older runs joined them with
    commas."""
    try:
        names = json.loads(tag)
    except ValueError:
        return [name for name in tag.split(",") if name]
    return [str(name) for name in names] if isinstance(names, list) else []


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
    previous = os.environ.get(_PROGRESS_BAR)
    os.environ[_PROGRESS_BAR] = "false"  # one bar per downloaded file would flood the log
    try:
        for record in records:
            load_predictions(tracker, record, folder)
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_BAR, None)
        else:
            os.environ[_PROGRESS_BAR] = previous
    attribute_pretraining(tracker, records)
    return records, notes


# --------------------------------------------------------------------------- columns


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


def _finetune_rank(mode: str) -> int:
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
        return (column.kind != "reference", position, model, column.backbone, _finetune_rank(column.finetune))

    return sorted(columns.values(), key=order)


@dataclass
class Skip:
    table: str
    column: str
    seed: int | str
    reason: str


def fusion_columns(
    records: Sequence[RunRecord], settings: AggregateSettings, naming: Naming, table: str, skipped: list[Skip]
) -> list[ColumnData]:
    """Every fusion x rule x fine-tune mode of one table (its records), per seed; refusals go to ``skipped``."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.finetune, record.seed)].append(record)
    modes = sorted({mode for mode, _ in groups}, key=_finetune_rank)
    seeds = sorted({seed for _, seed in groups})
    columns: list[ColumnData] = []
    for fusion, members in settings.fusions.items():
        present = [m for m in members if any(member_matches(r, m) for r in records)]
        if not present:
            skipped.append(
                Skip(
                    table,
                    f"{fusion}:*",
                    "*",
                    f"none of its members ({', '.join(members)}) has a FINISHED run in this table",
                )
            )
            continue
        for mode in modes:
            if not any(member_matches(r, m) for m in members for s in seeds for r in groups.get((mode, s), [])):
                continue  # none of the members was fine-tuned this way: no such fusion
            for seed in seeds:
                group = groups.get((mode, seed), [])
                for backbone, chosen, problem in resolve_members(members, group):
                    suffix = f"@{backbone}" if backbone else ""
                    if problem:  # one line for every rule ("*") of this fusion group
                        skipped.append(Skip(table, f"{fusion}:*{suffix}/{mode}", seed, problem))
                        continue
                    for rule in settings.rules:
                        name = f"{fusion}:{rule}{suffix}/{mode}"
                        column = next((c for c in columns if c.name == name), None)
                        if column is None:
                            column = ColumnData(name, "fusion", backbone or chosen[0].backbone, mode)
                            columns.append(column)
                        try:
                            outcome, details = fuse_group(rule, chosen, settings)
                        except FusionMismatchError as error:
                            skipped.append(Skip(table, name, seed, f"refused: {error}"))
                            continue
                        column.outcomes[seed] = outcome
                        column.details[seed] = details
    for skip in skipped:
        if skip.table == table:
            log.warning("%s: fusion %s seed %s skipped: %s", table, skip.column, skip.seed, skip.reason)
    order = {(f, r): i for i, (f, r) in enumerate((f, r) for f in settings.fusions for r in settings.rules)}

    def key(column: ColumnData):
        fusion, rest = column.name.split(":", 1)
        rule = re.split(r"[@/]", rest, maxsplit=1)[0]
        return (order.get((fusion, rule), 0), _finetune_rank(column.finetune), column.name)

    return sorted((c for c in columns if c.outcomes), key=key)


def member_matches(record: RunRecord, member: str) -> bool:
    """A member names a model: ``simclr`` matches the run tagged ``model=simclr`` and, when the sweep
    gave the method several backbones (model tags ``simclr_resnet18``, ``simclr_resnet34``), each of those."""
    return record.model == member or record.model == f"{member}_{record.backbone}"


def resolve_members(members: Sequence[str], group: Sequence[RunRecord]):
    """Yields (backbone or "", member runs in declared order, problem or "") for one fusion group.

    A member trained with several backbones splits the fusion per backbone (a member trained with one
    backbone only is shared by every backbone's fusion); a member missing from the group, or from one
    backbone's fusion, is a problem, never ignored.
    """
    found = {member: [r for r in group if member_matches(r, member)] for member in members}
    missing = [member for member, runs in found.items() if not runs]
    if missing:
        yield "", [], f"member(s) {', '.join(missing)} have no FINISHED run in this group"
        return
    # a member trained with one backbone only (tagged with its bare name) joins every backbone's fusion
    shared = {m for m, runs in found.items() if len(runs) == 1 and runs[0].model == m}
    if len(shared) == len(members):
        yield "", [found[m][0] for m in members], ""
        return
    backbones = sorted({r.backbone for m, runs in found.items() if m not in shared for r in runs})
    for backbone in backbones:
        chosen, absent = [], []
        for member in members:
            runs = found[member] if member in shared else [r for r in found[member] if r.backbone == backbone]
            (chosen.append(runs[0]) if runs else absent.append(member))
        problem = f"member(s) {', '.join(absent)} have no run with backbone {backbone}" if absent else ""
        yield backbone, chosen, problem


def fuse_group(rule: str, records: Sequence[RunRecord], settings: AggregateSettings) -> tuple[SeedOutcome, dict]:
    missing = [r.model for r in records if r.test is None]
    if missing:
        raise FusionMismatchError(f"no test predictions (test_probs.npz) for {', '.join(missing)}")
    members = [Member(r.model, r.test, r.val) for r in records]  # type: ignore[arg-type]
    result = fuse(
        rule,
        members,
        greedy_metric=settings.greedy_metric,
        greedy_rounds=settings.greedy_rounds,
        stacking_c=settings.stacking_c,
    )
    test = records[0].test
    assert test is not None
    metrics = classification_metrics(test.labels, result.probs)
    hours = [r.hours() for r in records]
    n_labels = max((r.n_labels for r in records), default=math.nan)
    outcome = SeedOutcome(
        records[0].seed,
        metrics,
        [r.run_id for r in records],
        n_labels,
        sum(h[0] for h in hours),
        sum(h[1] for h in hours),
        test.labels,
        result.predictions,
        test.split_digest,
        confusion(test.labels, result.probs),
    )
    details = {name: value for name, value in result.details.items() if name in ("weights", "deciding_share")}
    details["members"] = {r.model: r.run_id for r in records}
    return outcome, details


# --------------------------------------------------------------------------- statistics


def column_statistics(
    column: ColumnData, reference: ColumnData | None, settings: AggregateSettings, num_classes: int, weights_cache: dict
) -> dict:
    """Bootstrap intervals of the seed-averaged scores and the paired test against the reference."""
    row: dict = {}
    seeds = [s for s in sorted(column.outcomes) if column.outcomes[s].predictions is not None]
    digests = {column.outcomes[s].digest for s in seeds}
    if seeds and len(digests) == 1:
        labels = column.outcomes[seeds[0]].labels
        predictions = np.stack([column.outcomes[s].predictions for s in seeds])
        weights = _weights(len(labels), settings, weights_cache)
        for score in stats.SCORES:
            low, high = stats.bootstrap_ci(
                labels, predictions, score, confidence=settings.confidence, num_classes=num_classes, weights=weights
            )
            row[f"{score}_ci_low"], row[f"{score}_ci_high"] = 100 * low, 100 * high
    if reference is None or column is reference:
        return row
    shared = [
        s
        for s in seeds
        if s in reference.outcomes
        and reference.outcomes[s].predictions is not None
        and reference.outcomes[s].digest == column.outcomes[s].digest
    ]
    if not shared:
        return row
    tests = []
    for seed in shared:
        ours, theirs = column.outcomes[seed], reference.outcomes[seed]
        result = stats.mcnemar(theirs.predictions == theirs.labels, ours.predictions == ours.labels)
        tests.append(
            {
                "seed": seed,
                "b_reference_only": result.b,
                "c_model_only": result.c,
                "statistic": result.statistic,
                "p_value": result.p_value,
                "method": f"mcnemar_{result.method}",
            }
        )
    row["paired_tests"] = tests
    labels = column.outcomes[shared[0]].labels
    if len(shared) == 1:
        row["paired_test"], row["p_value"] = tests[0]["method"], tests[0]["p_value"]
    else:
        paired = stats.paired_bootstrap(
            labels,
            np.stack([reference.outcomes[s].predictions for s in shared]),
            np.stack([column.outcomes[s].predictions for s in shared]),
            "accuracy",
            confidence=settings.confidence,
            num_classes=num_classes,
            weights=_weights(len(labels), settings, weights_cache),
        )
        row["paired_test"], row["p_value"] = "paired_bootstrap", paired.p_value
    row["paired_seeds"] = len(shared)
    return row


def _weights(n: int, settings: AggregateSettings, cache: dict) -> np.ndarray:
    if n not in cache:
        cache[n] = stats.resample_weights(n, settings.bootstrap_resamples, settings.stats_seed)
    return cache[n]


def reference_for(column: ColumnData, references: Sequence[ColumnData]) -> ColumnData | None:
    """The reference column with the same backbone if there is one, else the first."""
    if not references:
        return None
    return next((r for r in references if r.backbone == column.backbone), references[0])


# --------------------------------------------------------------------------- one table


@dataclass
class TableResult:
    stem: str
    dataset: str
    size: str
    label_fraction: str
    class_weight: str
    class_names: list[str]
    columns: list[ColumnData]
    means: pd.DataFrame
    stds: pd.DataFrame
    statistics: dict[str, dict]
    paths: list[Path] = field(default_factory=list)

    def run_ids(self) -> dict[str, list[str]]:
        """Column -> the MLflow runs behind it (for a fusion: all its members over all seeds)."""
        return {c.name: [rid for s in sorted(c.outcomes) for rid in c.outcomes[s].run_ids] for c in self.columns}


def build_table(
    stem: str,
    records: Sequence[RunRecord],
    settings: AggregateSettings,
    naming: Naming,
    model_order: Sequence[str],
    skipped: list[Skip],
    weights_cache: dict,
) -> TableResult:
    first = records[0]
    num_classes = max(r.num_classes for r in records)
    class_names = next((r.class_names for r in records if len(r.class_names) == num_classes), [])
    singles = single_columns(records, naming, settings.reference, model_order)
    fusions = fusion_columns(records, settings, naming, stem, skipped)
    columns = singles + fusions
    means, stds = class_table([c.column(num_classes) for c in columns])
    references = [c for c in singles if c.kind == "reference"]
    statistics = {
        c.name: column_statistics(c, reference_for(c, references), settings, num_classes, weights_cache)
        for c in columns
    }
    return TableResult(
        stem,
        first.dataset,
        first.size,
        first.label_fraction,
        first.class_weight,
        class_names,
        columns,
        means,
        stds,
        statistics,
    )


def _budget_order(fraction: str) -> tuple:
    try:
        return (0, -float(fraction))
    except ValueError:
        count = re.match(r"(\d+)", fraction)
        return (1, -int(count.group(1)) if count else 0, fraction)


def write_table(table: TableResult, folder: Path, sweep_name: str, confidence: float = 0.95) -> list[Path]:
    caption = (
        f"{sweep_name}: {table.dataset} ({table.size} px), labels {table.label_fraction}, class weight "
        f"{table.class_weight}; test accuracy (%)"
    )
    n_seeds = max(len(c.outcomes) for c in table.columns)
    if n_seeds > 1:
        caption += f", mean ± std over up to {n_seeds} seeds"
    paths = write_class_table(
        table.means, table.stds, folder, table.stem, caption=caption, class_names=table.class_names
    )
    rows = []
    for column in table.columns:
        info = table.statistics.get(column.name, {})
        rows.append(
            {
                "model": column.name,
                "seeds": str(len(column.outcomes)),
                f"accuracy {100 * confidence:g}% CI": _interval(info, ACCURACY),
                f"mean class acc. {100 * confidence:g}% CI": _interval(info, MEAN_CLASS_ACCURACY),
                "vs reference": info.get("paired_test", ""),
                "p": stats.format_p(info.get("p_value", math.nan)),
            }
        )
    block = markdown(pd.DataFrame(rows), index_label=None)
    if any(column.kind == "reference" for column in table.columns):
        note = "paired tests compare each model with the reference model on the same labels and seeds."
    else:
        note = "no reference model in this table, so no paired tests."
    md_path = folder / f"{table.stem}.md"
    md_path.write_text(md_path.read_text() + f"\nBootstrap intervals resample test examples; {note}\n\n" + block)
    return paths


def _interval(info: dict, score: str) -> str:
    low, high = info.get(f"{score}_ci_low"), info.get(f"{score}_ci_high")
    return "" if low is None else f"[{low:.2f}, {high:.2f}]"


# --------------------------------------------------------------------------- summary and plots


def summary_frame(tables: Sequence[TableResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, strings to show): one row per table column."""
    rows, shown = [], []
    for table in tables:
        for column in table.columns:
            info = table.statistics.get(column.name, {})
            row = {
                "table": table.stem,
                "dataset": table.dataset,
                "size": table.size,
                "label_fraction": table.label_fraction,
                "class_weight": table.class_weight,
                "model": column.name,
                "kind": column.kind,
                "n_seeds": len(column.outcomes),
            }
            display = {
                "dataset": table.dataset,
                "labels": table.label_fraction,
                "class weight": table.class_weight,
                "model": column.name,
            }
            per_seed_mca = column.column(_classes(table)).mean_class_accuracy_per_seed()  # already in %
            for name, values, scale in (
                (ACCURACY, column.values("acc"), 100.0),
                (MEAN_CLASS_ACCURACY, [float(v) for v in per_seed_mca], 1.0),
                *((metric, column.values(metric), 1.0) for metric in SUMMARY_METRICS),
            ):
                mean, std = stats.mean_std([scale * v for v in values])
                row[name], row[f"{name}_std"] = mean, std
                decimals = 2 if name in (ACCURACY, MEAN_CLASS_ACCURACY) else 3
                display[name.replace("_", " ")] = format_cell(mean, std, decimals)
            for score in stats.SCORES:
                row[f"{score}_ci_low"] = info.get(f"{score}_ci_low", math.nan)
                row[f"{score}_ci_high"] = info.get(f"{score}_ci_high", math.nan)
            row["n_labels"] = stats.mean_std([o.n_labels for o in column.outcomes.values()])[0]
            row["gpu_hours"] = stats.mean_std([o.gpu_hours for o in column.outcomes.values()])[0]
            row["cpu_hours"] = stats.mean_std([o.cpu_hours for o in column.outcomes.values()])[0]
            row["paired_test"] = info.get("paired_test", "")
            row["p_value"] = info.get("p_value", math.nan)
            display["labels used"] = "–" if math.isnan(row["n_labels"]) else f"{row['n_labels']:.0f}"
            display["GPU-h"] = f"{row['gpu_hours']:.3f}"
            display["CPU-h"] = f"{row['cpu_hours']:.3f}"
            display["p vs ref."] = stats.format_p(row["p_value"])
            rows.append(row)
            shown.append(display)
    return pd.DataFrame(rows), pd.DataFrame(shown)


def _classes(table: TableResult) -> int:
    return table.means.shape[0] - 2


def paired_tests_frame(tables: Sequence[TableResult]) -> pd.DataFrame:
    rows = []
    for table in tables:
        for column, info in table.statistics.items():
            for test in info.get("paired_tests", []):
                rows.append({"table": table.stem, "model": column, **test})
    return pd.DataFrame(
        rows, columns=["table", "model", "seed", "b_reference_only", "c_model_only", "statistic", "p_value", "method"]
    )


def metric_history(tracker: SweepTracker, run_id: str, metric: str) -> tuple[list[int], list[float]]:
    latest: dict[int, tuple[int, float]] = {}
    for entry in tracker.client.get_metric_history(run_id, metric):
        if entry.step not in latest or entry.timestamp >= latest[entry.step][0]:
            latest[entry.step] = (entry.timestamp, entry.value)
    steps = sorted(latest)
    return steps, [latest[s][1] for s in steps]


def table_plots(tracker: SweepTracker, table: TableResult, folder: Path, sweep_name: str) -> list[Path]:
    suffix = table.stem.removeprefix("table_")
    title = f"{sweep_name}: {table.dataset}, labels {table.label_fraction}, cw {table.class_weight}"
    class_rows = table.means.iloc[:-2]
    paths = [
        plot_class_bars(
            class_rows,
            folder / f"per_class_{suffix}.png",
            table.class_names,
            f"per-class test accuracy — {title}",
            table.stds.iloc[:-2],
        )
    ]
    curves = {
        c.name: [metric_history(tracker, r.run_id, "val_acc") for r in c.records] for c in table.columns if c.records
    }
    if any(epochs for per_seed in curves.values() for epochs, _ in per_seed):
        paths.append(plot_val_curves(curves, folder / f"val_curves_{suffix}.png", f"validation accuracy — {title}"))
    matrices = {}
    for column in table.columns:
        found = [o.matrix for o in column.outcomes.values() if o.matrix is not None]
        if found:
            matrices[column.name + (f" (sum of {len(found)} seeds)" if len(found) > 1 else "")] = np.sum(found, axis=0)
    if matrices:
        names = table.class_names or [str(i) for i in range(_classes(table))]
        paths.append(
            plot_confusion_grid(
                matrices, names, folder / f"confusion_{suffix}.png", f"confusion matrices (test) — {title}"
            )
        )
    return paths


def budget_plots(tables: Sequence[TableResult], naming: Naming, folder: Path, sweep_name: str) -> list[Path]:
    """Accuracy against the label budget, one line per model, per dataset (and class weight)."""
    series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    titles = {}
    for table in tables:
        key = naming.series_suffix(table.dataset, table.size, table.class_weight)
        titles[key] = f"{sweep_name}: {table.dataset} ({table.size} px), cw {table.class_weight}"
        for column in table.columns:
            n_labels = stats.mean_std([o.n_labels for o in column.outcomes.values()])[0]
            if math.isnan(n_labels):
                continue
            mean, std = stats.mean_std([100 * v for v in column.values("acc")])
            series[key][column.name].append((n_labels, table.label_fraction, mean, std))
    paths = []
    for key, lines in series.items():
        if max(len(points) for points in lines.values()) < 2:
            continue  # one label budget: nothing to draw a line through
        paths.append(
            plot_accuracy_vs_labels(
                lines, folder / f"accuracy_vs_labels_{key}.png", f"test accuracy against labels — {titles[key]}"
            )
        )
    return paths


# --------------------------------------------------------------------------- the aggregate MLflow run


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name (alphanumerics, ``_ - . / : space``)."""
    return re.sub(r"[^\w.\- :/]", "_", "/".join(parts))


def fusion_metrics(tables: Sequence[TableResult]) -> dict[str, float]:
    """Per table, fusion and seed: ``<table>/<fusion column>/seed<s>/test_acc`` etc., as the runs name them."""
    values = {}
    for table in tables:
        for column in table.columns:
            if column.kind != "fusion":
                continue
            for seed, outcome in column.outcomes.items():
                for name, value in outcome.metrics.items():
                    if not math.isnan(value):
                        values[metric_name(table.stem.removeprefix("table_"), column.name, f"seed{seed}", name)] = value
    return values


def aggregate_run(tracker: SweepTracker, tags: dict[str, str]) -> str:
    """The sweep's one ``aggregate`` run: reopened (old artifacts cleared) if it exists, else created."""
    found = tracker.search(f"tags.stage = '{STAGE}' and tags.sweep = '{tracker.experiment}'")
    run = pick_run(found)
    if run is None:
        return tracker.create_run(f"aggregate-{tracker.experiment}", tags, {})
    run_id = run.info.run_id
    tracker.reopen(run_id)
    tracker.set_tags(run_id, tags)
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        get_artifact_repository(run.info.artifact_uri).delete_artifacts()
    except Exception as error:  # noqa: BLE001 - stores that cannot delete: files are overwritten instead
        log.info("could not clear the previous artifacts of %s (%s); overwriting them", run_id, error)
    return run_id


def run_tags(sweep: SweepConfig, records: Sequence[RunRecord], project_root: Path, skipped: int) -> dict[str, str]:
    def joined(values: Iterable) -> str:
        return ",".join(sorted({str(v) for v in values}))

    tags = {
        "sweep": sweep.name,
        "key": AGGREGATE_KEY,
        "stage": STAGE,
        "method": joined(r.method for r in records),
        "model": joined(r.model for r in records),
        "backbone": joined(r.backbone for r in records),
        "dataset": joined(r.dataset for r in records),
        "label_fraction": joined(r.label_fraction for r in records),
        "class_weight": joined(r.class_weight for r in records),
        "finetune": joined(r.finetune for r in records),
        "seed": joined(r.seed for r in records),
        "n_runs": str(len(records)),
        "skipped_fusions": str(skipped),
        "aggregate_settings": json.dumps(sweep.aggregate.model_dump(mode="json"), sort_keys=True),
    }
    git = git_state(project_root)
    if git is not None:
        tags["mlflow.source.git.commit"] = git.commit
        tags["git_dirty"] = str(git.dirty).lower()
    return tags


# --------------------------------------------------------------------------- the whole step


@dataclass
class AggregateResult:
    results_dir: Path
    run_id: str
    tables: list[TableResult]
    skipped: list[Skip]
    notes: list[str]
    metrics: dict[str, float]

    def table(self, dataset: str, label_fraction: str) -> TableResult:
        found = [t for t in self.tables if t.dataset == dataset and t.label_fraction == label_fraction]
        if len(found) != 1:
            raise KeyError(f"{len(found)} tables for {dataset} / {label_fraction}: {[t.stem for t in self.tables]}")
        return found[0]


def results_dir(sweep: SweepConfig, project_root: Path) -> Path:
    """``<results_dir>/<sweep name>``; a relative ``results_dir`` is relative to the project."""
    base = Path(sweep.results_dir).expanduser()
    return ((base if base.is_absolute() else Path(project_root) / base) / sweep.name).resolve()


def current_keys(sweep: SweepConfig) -> set[str]:
    try:
        from ssl_hpc.jobs import expand_jobs

        return {job.key for job in expand_jobs(sweep)}
    except Exception as error:  # noqa: BLE001 - only used to prefer current runs over stale duplicates
        log.info("could not expand the sweep's jobs (%s); duplicates are resolved by recency only", error)
        return set()


def aggregate_sweep(sweep: SweepConfig, project_root: Path, tracking_uri: str | None = None) -> AggregateResult:
    """Collects, fuses, tabulates, plots and logs; replaces ``results/<sweep>/`` and the aggregate run's artifacts.

    Raises :class:`AggregationError` when the sweep has no FINISHED fine-tune run.
    """
    tracking_uri = tracking_uri or resolve_tracking_uri(project_root)
    tracker = SweepTracker.existing(tracking_uri, sweep.name)
    if tracker is None:
        raise AggregationError(
            f"no MLflow experiment {sweep.name!r} in {tracking_uri}: run the sweep first "
            f"(python launch/sweep.py <sweep.yaml>)"
        )
    final = results_dir(sweep, project_root)
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(final.parent / f".{sweep.name}.lock"):  # two aggregations of one sweep: one after the other
        refuse_foreign_folder(final)
        with tempfile.TemporaryDirectory(prefix="aggregate-") as downloads:
            records, notes = collect(tracker, Path(downloads), current_keys(sweep))
            if not records:
                raise AggregationError(f"sweep {sweep.name!r} has no FINISHED fine-tune runs in {tracking_uri}")
            staging = Path(tempfile.mkdtemp(prefix=f".{sweep.name}.tmp-", dir=final.parent))
            os.chmod(staging, ordinary_folder_mode())  # mkdtemp's 0700 would hide the tables from the group
            try:
                result = _aggregate(sweep, tracker, records, notes, staging, project_root)
                written = write_manifest(staging)
                _replace(staging, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            run_id = _log_run(tracker, sweep, records, result, final, written, project_root)
    result.results_dir, result.run_id = final, run_id
    for table in result.tables:
        table.paths = [final / path.relative_to(staging) for path in table.paths]
    return result


def _aggregate(
    sweep: SweepConfig,
    tracker: SweepTracker,
    records: list[RunRecord],
    notes: list[str],
    folder: Path,
    project_root: Path,
) -> AggregateResult:
    settings = sweep.aggregate
    naming = Naming.of(records, settings.reference)
    by_table: dict[tuple, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_table[record.table_key].append(record)
    order = sorted(by_table, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 0, _budget_order(k[2]), k[3]))
    skipped: list[Skip] = []
    tables, weights_cache = [], {}
    for key in order:
        stem = "table_" + naming.table_suffix(*key)
        table = build_table(stem, by_table[key], settings, naming, sweep.grid.method, skipped, weights_cache)
        table.paths = write_table(table, folder, sweep.name, settings.confidence)
        if settings.plots:
            table.paths += table_plots(tracker, table, folder, sweep.name)
        tables.append(table)
    summary, shown = summary_frame(tables)
    write_frame(
        summary,
        folder,
        "summary",
        shown=shown,
        caption=f"{sweep.name}: summary (accuracy in %, AUC / F1 / kappa as fractions; hours per seed)",
    )
    paired_tests_frame(tables).to_csv(folder / "paired_tests.csv", index=False, float_format="%.10g")
    pd.DataFrame([vars(s) for s in skipped], columns=["table", "column", "seed", "reason"]).to_csv(
        folder / "skipped.csv", index=False
    )
    if settings.plots:
        budget_plots(tables, naming, folder, sweep.name)
    runs = [
        {"table": t.stem, "column": c.name, "seed": s, "run_id": rid}
        for t in tables
        for c in t.columns
        for s in sorted(c.outcomes)
        for rid in c.outcomes[s].run_ids
    ]
    pd.DataFrame(runs).to_csv(folder / "runs.csv", index=False)
    details = {
        t.stem: {c.name: {str(s): d for s, d in c.details.items()} for c in t.columns if c.details} for t in tables
    }
    (folder / "fusions.json").write_text(json.dumps(details, indent=2, default=float))
    (folder / "notes.md").write_text(_notes(sweep, records, notes, skipped))
    return AggregateResult(folder, "", tables, skipped, notes, fusion_metrics(tables))


def _notes(sweep: SweepConfig, records: Sequence[RunRecord], notes: list[str], skipped: list[Skip]) -> str:
    lines = [f"# Aggregation of {sweep.name}", "", f"{len(records)} FINISHED fine-tune runs.", ""]
    if notes:
        lines += ["## Which runs the tables use", "", *[f"- {note}" for note in notes], ""]
    if skipped:
        lines += ["## Fusions skipped", "", *[f"- {s.table} {s.column} seed {s.seed}: {s.reason}" for s in skipped], ""]
    return "\n".join(lines)


MANIFEST = ".aggregate-manifest.json"


def _files_below(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file() or path.is_symlink())


def write_manifest(folder: Path) -> list[str]:
    """Lists what the aggregation wrote, so a re-run replaces exactly that and nothing a user added."""
    written = _files_below(folder)
    (folder / MANIFEST).write_text(json.dumps(written, indent=1))
    return written


def _manifest(folder: Path) -> set[str] | None:
    try:
        return set(json.loads((folder / MANIFEST).read_text())) | {MANIFEST}
    except (OSError, ValueError):
        return None


def refuse_foreign_folder(final: Path) -> None:
    """``results/<sweep>/`` is replaced on every run: refuse a non-empty folder this step did not write."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise AggregationError(
            f"{final} is not a folder the aggregation wrote (a link or a file); move it away or set results_dir"
        )
    if final.is_dir() and any(final.iterdir()) and _manifest(final) is None:
        raise AggregationError(
            f"{final} holds files the aggregation did not write (no {MANIFEST}); move them "
            "away or set results_dir to another folder: nothing there is overwritten"
        )


def _replace(staging: Path, final: Path) -> None:
    """Swaps the freshly written folder in for the previous outputs, then carries over what a user added
    to the previous folder (files not in its manifest); one whose name is now an output is kept as
    ``.<sweep>.kept-<time>/<name>`` and said in the log. The previous folder is removed only once all of
    that has moved, so an interruption at any point leaves a user's files on disk."""
    if not final.exists():
        staging.rename(final)
        return
    ours = _manifest(final) or set()
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    final.rename(old)
    staging.rename(final)
    produced = set(_files_below(final))
    kept_folder = final.parent / f".{final.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}"
    for name in _files_below(old):
        if name in ours:
            continue
        destination = (kept_folder if name in produced else final) / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        (old / name).rename(destination)
        if name in produced:
            log.warning(
                "%s: %s was not written by the aggregation and its name is now an output; kept as %s",
                final,
                name,
                destination,
            )
    shutil.rmtree(old, ignore_errors=True)


def _log_run(
    tracker: SweepTracker,
    sweep: SweepConfig,
    records: Sequence[RunRecord],
    result: AggregateResult,
    folder: Path,
    written: Sequence[str],
    project_root: Path,
) -> str:
    """Logs the aggregation's own files (not what a user keeps beside them) into the sweep's aggregate run."""
    run_id = aggregate_run(tracker, run_tags(sweep, records, project_root, len(result.skipped)))
    try:
        tracker.log_metrics(
            run_id, {**result.metrics, "n_runs": float(len(records)), "skipped_fusions": float(len(result.skipped))}
        )
        for name in written:
            parent = str(Path(name).parent)
            tracker.client.log_artifact(run_id, str(folder / name), None if parent == "." else parent)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    tracker.finish(run_id, FINISHED)
    return run_id


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/aggregate.py",
        description="Fusion ensembles, tables, statistics and plots from a sweep's finished fine-tune runs.",
    )
    parser.add_argument("sweep", type=Path, help="the sweep YAML (e.g. sweeps/smoke.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="dotted.key=value",
        help="override a sweep field, e.g. --set aggregate.rules=[product,vote] (repeatable)",
    )
    return parser


def main(argv: list[str], project_root: Path) -> int:
    """0 on success; 1 when there is nothing to aggregate; 2 on a bad sweep file or override."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sweep = load_sweep(args.sweep, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        result = aggregate_sweep(sweep, Path(project_root))
    except AggregationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for skip in result.skipped:
        print(f"skipped fusion {skip.column} in {skip.table} (seed {skip.seed}): {skip.reason}", file=sys.stderr)
    print(
        f"{sweep.name}: {len(result.tables)} tables, "
        f"{sum(c.kind == 'fusion' for t in result.tables for c in t.columns)} fusion columns, "
        f"{len(result.skipped)} fusions skipped"
    )
    print(f"results: {result.results_dir}")
    print(f"MLflow run: {result.run_id} (experiment {sweep.name!r})")
    return 0
