"""The command lines, the only place that parses arguments and prints: ``launch/sweep.py``
(:func:`sweep_main`), ``launch/aggregate.py`` (:func:`aggregate_main`), ``launch/tune.py`` (:func:`tune_main`),
and the ``ssl-hpc sweep|aggregate|tune|status`` console script (:func:`main`) that wraps the three.

Only the configuration (which imports nothing heavy) is imported at the top: a sweep with a bad field is
refused before torch, MLflow or Ray load, in a fraction of a second. Everything else is imported where it
is used, after the sweep was validated."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ssl_hpc.config import (
    BACKENDS,
    ConfigError,
    SweepConfig,
    apply_overrides,
    default_data_root,
    load_sweep,
    read_yaml,
    validate_sweep,
)

if TYPE_CHECKING:
    from ssl_hpc.jobs import Job
    from ssl_hpc.train.handle import RunContext

log = logging.getLogger("ssl_hpc")


def sweep_parser(prog: str, description: str, sweep_help: str, set_example: str) -> argparse.ArgumentParser:
    """What every command takes: a sweep file and ``--set dotted.key=value`` overrides."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("sweep", type=Path, help=sweep_help)
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="dotted.key=value", help=set_example
    )
    return parser


WATCH_DEFAULT_S = 10.0  # --watch without SECONDS


def build_parser() -> argparse.ArgumentParser:
    parser = sweep_parser(
        prog="launch/sweep.py",
        description="Expand a sweep YAML into pretraining and fine-tuning jobs and run them.",
        sweep_help="the sweep YAML (e.g. sweeps/smoke.yaml)",
        set_example="override a sweep field, e.g. --set finetune.epochs=5 (repeatable)",
    )
    parser.add_argument("--backend", choices=BACKENDS, help="where jobs run (default: the sweep's 'backend')")
    parser.add_argument("--dry-run", action="store_true", help="list every job, its key and dependencies; run nothing")
    parser.add_argument("--status", action="store_true", help="one row per job: pending / running / finished / failed")
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=WATCH_DEFAULT_S,
        metavar="SECONDS",
        help=f"with --status: a compact view redrawn every SECONDS (default {WATCH_DEFAULT_S:g}) until no job is "
        "pending or running (exit 0); Ctrl-C stops watching (exit 130), not the sweep",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def output_root(sweep: SweepConfig, project_root: Path) -> Path:
    base = Path(sweep.output_dir).expanduser()
    base = base if base.is_absolute() else project_root / base
    return (base / sweep.name).resolve()


def make_context(sweep: SweepConfig, project_root: Path, progress: bool) -> RunContext:
    from ssl_hpc.tracking import git_state, resolve_tracking_uri
    from ssl_hpc.train.handle import RunContext

    return RunContext(
        sweep_name=sweep.name,
        tracking_uri=resolve_tracking_uri(project_root),
        output_root=output_root(sweep, project_root),
        data_root=default_data_root(sweep.data_root),
        runtime=sweep.runtime,
        git=git_state(project_root),
        progress=progress,
        datasets=sweep.datasets,
        cam=sweep.cam,
    )


def format_jobs(jobs: list[Job]) -> str:
    lines = [f"{'key':12}  {'stage':8}  {'depends on':12}  job"]
    for job in jobs:
        lines.append(f"{job.key:12}  {job.stage:8}  {','.join(job.depends_on) or '-':12}  {job.describe()}")
    pretrain = sum(job.stage == "pretrain" for job in jobs)
    lines.append(f"{len(jobs)} jobs: {pretrain} pretrain, {len(jobs) - pretrain} finetune")
    return "\n".join(lines)


def prepare_data(sweep: SweepConfig, jobs: list[Job], data_root: Path) -> None:
    """Makes sure every dataset is there before anything runs or is submitted: MedMNIST files are
    downloaded here (on the login node) if allowed; image folders are indexed and split."""
    from ssl_hpc.data.loading import ensure_dataset
    from ssl_hpc.models.pretrained import ensure_weights

    needed = set()
    for job in jobs:
        needed.add((job.config.dataset, job.config.size))
        if job.config.pretrain_settings is not None:
            needed.update((name, job.config.size) for name in job.config.pretrain_settings.extra_unlabeled)
    for dataset, size in sorted(needed):
        ensure_dataset(dataset, size, data_root, sweep.datasets, download=sweep.data.download)
    for backbone, weights in sorted(
        {
            (job.config.backbone, job.config.model.pretrained_weights)
            for job in jobs
            if job.config.model.pretrained_weights
        }
    ):
        ensure_weights(backbone, weights, download=sweep.data.download)


def sweep_main(argv: list[str], project_root: Path) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.watch is not None and (not args.status or not args.watch > 0):
        print("error: --watch [SECONDS > 0] only goes with --status (e.g. --status --watch 10)", file=sys.stderr)
        return 2
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        from ssl_hpc.jobs import check_registered_names, expand_jobs  # the registries: torch, lightly, timm

        check_registered_names(sweep, source=args.sweep)
        jobs = expand_jobs(sweep)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    backend = args.backend or sweep.backend
    if args.dry_run:
        print(format_jobs(jobs))
        return 0
    context = make_context(sweep, project_root, progress=not args.quiet and sys.stderr.isatty())
    if args.status:
        return print_status(backend, jobs, context, args.watch)
    refused = preflight(backend, sweep, context, project_root)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    from ssl_hpc.data.image_folder import DatasetFolderError
    from ssl_hpc.data.medmnist import DatasetMissingError
    from ssl_hpc.models.pretrained import PretrainedWeightsMissing

    try:
        prepare_data(sweep, jobs, context.data_root)
    except (DatasetMissingError, DatasetFolderError, PretrainedWeightsMissing) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return launch(backend, sweep, jobs, context, project_root)


def preflight(backend: str, sweep: SweepConfig, context: RunContext, project_root: Path) -> str | None:
    """What must hold before any data is fetched or anything submitted: for Slurm, a valid cluster profile
    and a tracking store the nodes can use. Returns the error, or ``None``."""
    if backend != "slurm":
        return None
    from ssl_hpc.launchers.profiles import sweep_profile
    from ssl_hpc.launchers.slurm import check_tracking

    try:
        name, profile = sweep_profile(sweep, project_root)
        check_tracking(context.tracking_uri, profile, name)
    except ConfigError as error:
        return str(error)
    if shutil.which("sbatch") is None:
        return "--backend slurm: sbatch is not on PATH; run this on a Slurm login node (and set SLURM_CONF if needed)"
    return None


def print_status(backend: str, jobs: list[Job], context: RunContext, watch_s: float | None = None) -> int:
    """One row per job, or with ``watch_s`` the compact view redrawn until every job has ended. A sweep
    submitted to Slurm combines MLflow with Slurm's view (one squeue, one sacct per refresh)."""
    from ssl_hpc.status import format_status
    from ssl_hpc.watch import Collector, ui_line, watch

    collect = Collector(jobs, context.tracking_uri, context.sweep_name, context.output_root)
    footer = lambda: ui_line(context.tracking_uri, context.sweep_name, collect.tracker)  # noqa: E731
    if watch_s is not None:
        return watch(collect, watch_s, context.sweep_name, sys.stdout, sys.stdout.isatty(), footer)
    print(format_status(collect()[0]))
    print(footer())
    return 0


def launch(
    backend: str, sweep: SweepConfig, jobs: list[Job], context: RunContext, project_root: Path | None = None
) -> int:
    project_root = Path(project_root) if project_root is not None else Path(__file__).resolve().parents[1]
    if backend == "slurm":
        return submit_to_slurm(sweep, jobs, context, project_root)
    if backend == "ray":
        from ssl_hpc.launchers.ray import run_ray

        try:
            outcomes = run_ray(jobs, context, sweep.ray, project_root)
        except ConfigError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    elif backend == "local":
        from ssl_hpc.launchers.local import run_local

        outcomes = run_local(jobs, context)
    else:
        print(f"error: backend {backend!r} is not available; accepted: {', '.join(BACKENDS)}", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"{sweep.name}: " + ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items())))
    print(f"tracking: {context.tracking_uri}  (experiment {sweep.name!r})")
    aggregated = aggregate_at_the_end(sweep, context, project_root)
    from ssl_hpc.watch import ui_line

    print(ui_line(context.tracking_uri, sweep.name))
    return 0 if aggregated and all(outcome in ("finished", "skipped") for outcome in outcomes.values()) else 1


def submit_to_slurm(sweep: SweepConfig, jobs: list[Job], context: RunContext, project_root: Path) -> int:
    """``--backend slurm``: validate the profile, submit, print the job ids. 0 when everything is queued or done."""
    from ssl_hpc.launchers.profiles import sweep_profile
    from ssl_hpc.launchers.slurm import SlurmError, check_tracking, format_report, submit_sweep

    try:
        name, profile = sweep_profile(sweep, project_root)
        check_tracking(context.tracking_uri, profile, name)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        report = submit_sweep(sweep, jobs, context, profile, project_root, name)
    except SlurmError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(report, sweep.name, context.output_root))
    print(
        f"tracking: {context.tracking_uri}  (experiment {sweep.name!r}); "
        f"follow with: python launch/sweep.py <sweep> --status --watch"
    )
    from ssl_hpc.watch import ui_line

    print(ui_line(context.tracking_uri, sweep.name))
    return 1 if report.refused else 0


def aggregate_at_the_end(sweep: SweepConfig, context: RunContext, project_root: Path) -> bool:
    """The sweep's last step: tables, fusions and plots of every FINISHED fine-tune run (also after
    some runs failed: what finished is worth a table). False if the aggregation itself failed."""
    from ssl_hpc.aggregate import AggregationError, aggregate_sweep

    try:
        result = aggregate_sweep(sweep, project_root, tracking_uri=context.tracking_uri)
    except AggregationError as error:
        print(f"aggregation: nothing to aggregate ({error})")
        return True
    except Exception:
        log.exception("the aggregation failed; re-run it alone with: python launch/aggregate.py SWEEP.yaml")
        return False
    for skip in result.skipped:
        print(f"aggregation: skipped fusion {skip.column} in {skip.table}: {skip.reason}")
    print(f"results: {result.results_dir}")
    return True


def aggregate_parser() -> argparse.ArgumentParser:
    return sweep_parser(
        prog="launch/aggregate.py",
        description="Fusion ensembles, tables, statistics and plots from a sweep's finished fine-tune runs.",
        sweep_help="the sweep YAML (e.g. sweeps/smoke.yaml)",
        set_example="override a sweep field, e.g. --set aggregate.rules=[product,vote] (repeatable)",
    )


def aggregate_main(argv: list[str], project_root: Path) -> int:
    """``python launch/aggregate.py SWEEP.yaml [--set k=v ...]``: the aggregation step alone.

    0 on success; 1 when there is nothing to aggregate; 2 on a bad sweep file or override."""
    from ssl_hpc.aggregate import AggregationError, aggregate_sweep

    args = aggregate_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sweep = load_sweep(args.sweep, args.overrides)
        from ssl_hpc.jobs import check_registered_names

        check_registered_names(sweep, str(args.sweep))
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


def tune_parser() -> argparse.ArgumentParser:
    parser = sweep_parser(
        prog="launch/tune.py",
        description="Hyperparameter search with Ray Tune (ASHA); one MLflow run per trial.",
        sweep_help="a sweep YAML with a tune: section (e.g. sweeps/tune_smoke.yaml)",
        set_example="override a sweep field (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate the search space and exit")
    return parser


def tune_main(argv: list[str], project_root: Path) -> int:
    """``python launch/tune.py SWEEP.yaml [--set k=v ...] [--dry-run]``: a hyperparameter search with Ray Tune."""
    from ssl_hpc.tune import probe_values, run_search, trial_jobs, trial_sweep, validate_space

    args = tune_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = str(args.sweep)
    try:
        raw = apply_overrides(read_yaml(args.sweep), args.overrides)
        sweep = validate_sweep(raw, source=source)
        if sweep.tune is None:
            raise ConfigError(f"{source}: tune: required by launch/tune.py (search space, metric, scheduler)")
        validate_space(raw, sweep.tune, source)
        from ssl_hpc.jobs import check_registered_names

        check_registered_names(sweep, source)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = sweep.tune
    if args.dry_run:
        print(
            f"{sweep.name}: {settings.num_samples} trials over {', '.join(settings.space)}; metric "
            f"{settings.metric} ({settings.mode})"
        )
        return 0

    from ssl_hpc.data.medmnist import DatasetMissingError
    from ssl_hpc.tracking import FINISHED, KILLED, SweepTracker

    context = make_context(sweep, project_root, progress=False)
    try:
        _, probe_job = trial_jobs(trial_sweep(raw, probe_values(settings), source))
        prepare_data(sweep, [probe_job], context.data_root)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    SweepTracker(context.tracking_uri, sweep.name)  # the store and experiment, created once, here
    outcomes = run_search(raw, sweep, context, project_root, source)
    counts: dict[str, int] = {}
    for status in outcomes.values():
        counts[status] = counts.get(status, 0) + 1
    print(f"{sweep.name}: {len(outcomes)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"tracking: {context.tracking_uri}  (experiment {sweep.name!r})")
    return 0 if outcomes and all(status in (FINISHED, KILLED) for status in outcomes.values()) else 1


# The checkout this package runs from (an editable install): sweeps' outputs/, results/ and mlflow/ live there.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "sweep": "expand a sweep and run it (launch/sweep.py)",
    "status": "one row per job of a sweep (launch/sweep.py --status)",
    "aggregate": "fusions, tables and plots of a sweep's finished runs (launch/aggregate.py)",
    "tune": "a hyperparameter search with Ray Tune (launch/tune.py)",
}


def main(argv: list[str] | None = None) -> int:
    """``ssl-hpc COMMAND ...``: the console script; each command takes the arguments of its launch/ script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        usage = "\n".join(f"  {name:<10} {text}" for name, text in COMMANDS.items())
        print(f"usage: ssl-hpc COMMAND [arguments]\n\ncommands:\n{usage}", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    command, rest = argv[0], argv[1:]
    if command == "sweep":
        return sweep_main(rest, PROJECT_ROOT)
    if command == "status":
        return sweep_main([*rest, "--status"], PROJECT_ROOT)
    if command == "aggregate":
        return aggregate_main(rest, PROJECT_ROOT)
    return tune_main(rest, PROJECT_ROOT)
