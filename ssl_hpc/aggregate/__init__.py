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
4. **Plots** (PNG) beside them, the leakage counts and CAM figures of the runs, and ``report.html``
   (every table and figure in one self-contained page), and everything as artifacts of one ``aggregate``
   MLflow run per sweep (tags ``stage=aggregate``, ``key=aggregate``), reused by every re-run.

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

The step is split by idea, in the order data flows:

- :mod:`~ssl_hpc.aggregate.collect`: the FINISHED fine-tune runs as :class:`RunRecord` objects;
- :mod:`~ssl_hpc.aggregate.columns`: what a table column is, its name, the single-model columns;
- :mod:`~ssl_hpc.aggregate.fusion_columns`: fusion groups, their members, the fused columns;
- :mod:`~ssl_hpc.aggregate.column_stats`: bootstrap intervals and paired tests of one column;
- :mod:`~ssl_hpc.aggregate.table`: one table, built and written;
- :mod:`~ssl_hpc.aggregate.summary`, :mod:`~ssl_hpc.aggregate.figures`: the summary over all tables, the plots;
- :mod:`~ssl_hpc.aggregate.findings`: the runs' leakage counts and CAM figures;
- :mod:`~ssl_hpc.aggregate.report`: ``report.html`` from the files of the results folder;
- :mod:`~ssl_hpc.aggregate.mlflow_run`: the sweep's ``aggregate`` MLflow run;
- :mod:`~ssl_hpc.aggregate.results_folder`: the manifest, refusing a foreign folder, swapping in the new one;
- :mod:`~ssl_hpc.aggregate.step`: :func:`aggregate_sweep`, all of the above in order.

The command line (``launch/aggregate.py``) is :func:`ssl_hpc.cli.aggregate_main`.
"""

from ssl_hpc.aggregate.collect import (
    RunRecord,
    attribute_pretraining,
    collect,
    deduplicate,
    describe_cell,
    finished_finetune_runs,
    load_predictions,
    parse_class_names,
)
from ssl_hpc.aggregate.column_stats import column_statistics, reference_for
from ssl_hpc.aggregate.columns import FINETUNE_ORDER, ColumnData, Naming, SeedOutcome, outcome_of_run, single_columns
from ssl_hpc.aggregate.errors import AggregationError
from ssl_hpc.aggregate.figures import budget_plots, metric_history, table_plots
from ssl_hpc.aggregate.findings import collect_cams, leakage_frame
from ssl_hpc.aggregate.fusion_columns import Skip, fuse_group, fusion_columns, member_matches, resolve_members
from ssl_hpc.aggregate.mlflow_run import AGGREGATE_KEY, STAGE, aggregate_run, fusion_metrics, metric_name, run_tags
from ssl_hpc.aggregate.report import REPORT, results_tables, write_report
from ssl_hpc.aggregate.results_folder import MANIFEST, refuse_foreign_folder, write_manifest
from ssl_hpc.aggregate.step import AggregateResult, aggregate_sweep, current_keys, results_dir
from ssl_hpc.aggregate.summary import SUMMARY_METRICS, paired_tests_frame, summary_frame
from ssl_hpc.aggregate.table import TableResult, build_table, write_table

__all__ = [
    "AGGREGATE_KEY",
    "AggregateResult",
    "AggregationError",
    "ColumnData",
    "FINETUNE_ORDER",
    "MANIFEST",
    "REPORT",
    "Naming",
    "RunRecord",
    "STAGE",
    "SUMMARY_METRICS",
    "SeedOutcome",
    "Skip",
    "TableResult",
    "aggregate_run",
    "aggregate_sweep",
    "attribute_pretraining",
    "budget_plots",
    "build_table",
    "collect",
    "collect_cams",
    "column_statistics",
    "current_keys",
    "deduplicate",
    "describe_cell",
    "finished_finetune_runs",
    "fuse_group",
    "fusion_columns",
    "fusion_metrics",
    "leakage_frame",
    "load_predictions",
    "member_matches",
    "metric_history",
    "metric_name",
    "outcome_of_run",
    "paired_tests_frame",
    "parse_class_names",
    "reference_for",
    "refuse_foreign_folder",
    "resolve_members",
    "results_tables",
    "results_dir",
    "run_tags",
    "single_columns",
    "summary_frame",
    "table_plots",
    "write_manifest",
    "write_report",
    "write_table",
]
