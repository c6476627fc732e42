"""``python launch/sweep.py SWEEP.yaml [--backend local|slurm|ray] [--dry-run] [--status] [--set k=v ...]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ssl_hpc.config import BACKENDS, ConfigError, SweepConfig, load_sweep
from ssl_hpc.data.medmnist import DatasetMissingError, default_data_root, ensure_medmnist_file
from ssl_hpc.jobs import Job, expand_jobs
from ssl_hpc.runner import RunContext
from ssl_hpc.tracking import SweepTracker, git_state, resolve_tracking_uri

log = logging.getLogger("ssl_hpc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch/sweep.py",
        description="Expand a sweep YAML into pretraining and fine-tuning jobs and run them.",
    )
    parser.add_argument("sweep", type=Path, help="the sweep YAML (e.g. sweeps/smoke.yaml)")
    parser.add_argument("--backend", choices=BACKENDS, help="where jobs run (default: the sweep's 'backend')")
    parser.add_argument("--dry-run", action="store_true", help="list every job, its key and dependencies; run nothing")
    parser.add_argument("--status", action="store_true", help="one row per job: pending / running / finished / failed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value",
                        help="override a sweep field, e.g. --set finetune.epochs=5 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def output_root(sweep: SweepConfig, project_root: Path) -> Path:
    base = Path(sweep.output_dir).expanduser()
    base = base if base.is_absolute() else project_root / base
    return (base / sweep.name).resolve()


def make_context(sweep: SweepConfig, project_root: Path, progress: bool) -> RunContext:
    return RunContext(
        sweep_name=sweep.name,
        tracking_uri=resolve_tracking_uri(project_root),
        output_root=output_root(sweep, project_root),
        data_root=default_data_root(sweep.data_root),
        runtime=sweep.runtime,
        git=git_state(project_root),
        progress=progress,
    )


def format_jobs(jobs: list[Job]) -> str:
    lines = [f"{'key':12}  {'stage':8}  {'depends on':12}  job"]
    for job in jobs:
        lines.append(f"{job.key:12}  {job.stage:8}  {','.join(job.depends_on) or '-':12}  {job.describe()}")
    pretrain = sum(job.stage == "pretrain" for job in jobs)
    lines.append(f"{len(jobs)} jobs: {pretrain} pretrain, {len(jobs) - pretrain} finetune")
    return "\n".join(lines)


def prepare_data(sweep: SweepConfig, jobs: list[Job], data_root: Path) -> None:
    """Makes sure every dataset file is there (downloading it here, on the login node, if allowed)."""
    for dataset, size in sorted({(job.config.dataset, job.config.size) for job in jobs}):
        ensure_medmnist_file(dataset, size, data_root, download=sweep.data.download)


def sweep_main(argv: list[str], project_root: Path) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sweep = load_sweep(args.sweep, args.overrides)
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
        return print_status(backend, jobs, context)
    try:
        prepare_data(sweep, jobs, context.data_root)
    except DatasetMissingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return launch(backend, sweep, jobs, context)


def print_status(backend: str, jobs: list[Job], context: RunContext) -> int:
    from ssl_hpc.status import format_status, local_statuses

    tracker = SweepTracker.existing(context.tracking_uri, context.sweep_name)
    print(format_status(local_statuses(jobs, tracker, context.output_root)))
    return 0


def launch(backend: str, sweep: SweepConfig, jobs: list[Job], context: RunContext) -> int:
    if backend == "local":
        from ssl_hpc.launchers.local import run_local

        outcomes = run_local(jobs, context)
    else:
        print(f"error: backend {backend!r} is not available yet; accepted: local", file=sys.stderr)
        return 2
    counts: dict[str, int] = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    print(f"{sweep.name}: " + ", ".join(f"{count} {outcome}" for outcome, count in sorted(counts.items())))
    print(f"tracking: {context.tracking_uri}  (experiment {sweep.name!r})")
    return 0 if all(outcome in ("finished", "skipped") for outcome in outcomes.values()) else 1
