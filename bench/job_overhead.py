#!/usr/bin/env python
"""Where a short job's time goes, before and after the fixed costs were cut (issue 16, item 2).

Two ways to run the sweep (default ``sweeps/smoke_ssl.yaml``), as users run it:

- ``--mode sweep`` (default): every job in one process through the local backend, as
  ``python launch/sweep.py sweeps/smoke_ssl.yaml`` runs them on a laptop or a single node (the interpreter
  and the imports paid once);
- ``--mode job``: every job in a fresh Python process, as one Slurm array task with ``pack: 1`` runs it
  (interpreter start and imports paid by every job).

Either way everything counts: interpreter start, imports, data loading, the MLflow run, the leakage guard,
training, evaluation, CAMs and uploads. The jobs log to a temporary SQLite store; outputs go to a
temporary folder; nothing is written into the checkout. ``--before REV`` also measures the code at ``REV``
from a temporary git worktree (``git worktree add``), removed afterwards.

Figures: ``train_fraction`` = sum of the runs' training seconds / wall seconds (each process measured from
spawn to exit). Training seconds are ``seconds_train`` where the code logs it (the timed phases of
:mod:`ssl_hpc.train.phases`), else ``train_seconds`` (the epochs, plus the feature cache), which the code
before the phases logged; ``train_fraction_epochs`` uses ``train_seconds`` for both, the like-for-like
comparison. The ``seconds_*`` phases are summed over the runs that logged them; per stage (pretrain,
finetune), a job's wall time is its process's in ``--mode job`` and the sum of its phases in
``--mode sweep`` (so only where phases are logged).

Last output line: a JSON object with ``train_fraction_before``, ``train_fraction_after`` and more.

Usage: MEDMNIST_ROOT=../shared/data python bench/job_overhead.py [--mode sweep|job] [--before REV]
       [--threads 2] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("setup", "train", "eval", "cam", "upload")

# What a child process runs: the sweep from the spec, with the project's own code (the one at argv[1]).
PRELUDE = """
import json, sys
from pathlib import Path
project, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
sys.path.insert(0, project)
from ssl_hpc.config import apply_overrides, default_data_root, validate_sweep
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.train.handle import RunContext
sweep = validate_sweep(apply_overrides(spec["raw"], spec["overrides"]), source="bench job_overhead")
context = RunContext(
    sweep_name=sweep.name, tracking_uri=spec["tracking_uri"], output_root=Path(spec["output_root"]),
    data_root=default_data_root(sweep.data_root), runtime=sweep.runtime, datasets=sweep.datasets, cam=sweep.cam,
)
"""

# --mode job: one job of the sweep, through the runner, as one Slurm task runs it.
ONE_JOB = (
    PRELUDE
    + """
from ssl_hpc.runner import run_job
(job,) = [job for job in expand_jobs(sweep) if job.key == spec["key"]]
sys.exit(0 if run_job(job, context) == "finished" else 3)
"""
)

# --mode sweep: every job, through the local backend, as launch/sweep.py runs them without a cluster.
ALL_JOBS = (
    PRELUDE
    + """
from ssl_hpc.launchers.local import run_local
outcomes = run_local(expand_jobs(sweep), context)
unfinished = {key: outcome for key, outcome in outcomes.items() if outcome != "finished"}
sys.exit(f"jobs did not finish: {unfinished}" if unfinished else 0)
"""
)

# The parent's view of the sweep: its jobs in dependency order, from the same project's code.
PLAN = """
import json, sys
from pathlib import Path
project, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
sys.path.insert(0, project)
from ssl_hpc.config import apply_overrides, validate_sweep
from ssl_hpc.jobs import expand_jobs, order_jobs
sweep = validate_sweep(apply_overrides(spec["raw"], spec["overrides"]), source="bench job_overhead")
jobs = [[job.key, job.stage, job.describe()] for job in order_jobs(expand_jobs(sweep))]
print(json.dumps({"name": sweep.name, "jobs": jobs}))
"""

# The runs' metrics, read back from the store.
READ = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2])
runs = client.search_runs([experiment.experiment_id], max_results=1000)
print(json.dumps({run.data.tags.get("key", ""): run.data.metrics for run in runs}))
"""


def measure(project: Path, raw: dict, overrides: list[str], label: str, mode: str) -> dict:
    """Runs every job of the sweep with ``project``'s code (one process each, or all in one); returns the sums."""
    with tempfile.TemporaryDirectory(prefix=f"bench-job-overhead-{label}-") as folder:
        folder = Path(folder)
        spec = {
            "raw": raw,
            "overrides": overrides,
            "tracking_uri": f"sqlite:///{folder}/mlflow.db",
            "output_root": str(folder / "outputs"),
        }
        spec_path = folder / "spec.json"
        spec_path.write_text(json.dumps(spec))
        plan = json.loads(output([sys.executable, "-c", PLAN, str(project), str(spec_path)]))
        stages = {key: stage for key, stage, _ in plan["jobs"]}
        if mode == "job":
            walls = {}
            for key, stage, description in plan["jobs"]:
                spec_path.write_text(json.dumps({**spec, "key": key}))
                walls[key] = timed_process(ONE_JOB, project, spec_path, f"{label}: job {key} ({description})")
                print(f"{label:>6} {stage:8} {walls[key]:6.1f} s  {description}", flush=True)
        else:
            wall = timed_process(ALL_JOBS, project, spec_path, f"{label}: the sweep")
            print(f"{label:>6} {len(stages)} jobs in one process: {wall:6.1f} s", flush=True)
        metrics = json.loads(output([sys.executable, "-c", READ, spec["tracking_uri"], plan["name"]]))
    if mode == "sweep":
        # One process: the stages' shares from the runs' phases (which add up to each job's time), if logged.
        total = summarise({"": wall}, {"": combined(metrics, stages)}, jobs=len(stages))
        if not total["phases_logged"]:
            return total
        walls = {key: sum(metrics[key].get(f"seconds_{phase}", 0.0) for phase in PHASES) for key in stages}
    else:
        total = summarise(walls, metrics)
    by_stage = {
        stage: summarise({key: wall for key, wall in walls.items() if stages[key] == stage}, metrics)
        for stage in sorted(set(stages.values()))
    }
    return {**total, **by_stage}


def timed_process(script: str, project: Path, spec_path: Path, what: str) -> float:
    """Seconds from spawning ``python -c script project spec`` to its exit; stops the benchmark if it fails."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", script, str(project), str(spec_path)],
        capture_output=True,
        text=True,
        cwd=spec_path.parent,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stderr[-4000:]}")
    return seconds


def combined(metrics: dict[str, dict[str, float]], keys: Iterable[str]) -> dict[str, float]:
    """The runs' metrics summed, name by name; a phase counts only if every run logged it."""
    keys = list(keys)
    names = set.intersection(*(set(metrics[key]) for key in keys)) if keys else set()
    timings = [name for name in names if name.startswith(("seconds_", "train_seconds"))]
    return {name: sum(metrics[key][name] for key in keys) for name in timings}


def output(command: list[str]) -> str:
    """The command's stdout; its stderr in the error when it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[:2]} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def summarise(walls: dict[str, float], metrics: dict[str, dict[str, float]], jobs: int | None = None) -> dict:
    wall = sum(walls.values())
    epochs = sum(metrics[key].get("train_seconds", 0.0) for key in walls)
    phases = {phase: sum(metrics[key].get(f"seconds_{phase}", 0.0) for key in walls) for phase in PHASES}
    timed = all("seconds_train" in metrics[key] for key in walls)
    train = phases["train"] if timed else epochs
    return {
        "jobs": len(walls) if jobs is None else jobs,
        "wall_seconds": round(wall, 1),
        "train_seconds": round(train, 1),
        "train_fraction": round(train / wall, 3),
        "train_fraction_epochs": round(epochs / wall, 3),
        "phases_logged": timed,
        **({f"seconds_{phase}": round(value, 1) for phase, value in phases.items()} if timed else {}),
    }


def worktree_at(revision: str) -> Path:
    """A temporary checkout of ``revision`` beside this one's repository (removed by :func:`drop_worktree`)."""
    path = Path(tempfile.mkdtemp(prefix=f"jo-{revision[:12]}-"))
    path.rmdir()
    subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    return path


def drop_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(PROJECT_ROOT), "worktree", "remove", "--force", str(path)], check=False)


def main() -> None:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default=str(PROJECT_ROOT / "sweeps" / "smoke_ssl.yaml"))
    parser.add_argument("--before", metavar="REV", help="also measure the code at this git revision")
    parser.add_argument("--after", metavar="REV", help="measure this revision instead of the working tree")
    parser.add_argument("--skip-after", action="store_true", help="measure only --before")
    parser.add_argument(
        "--mode",
        choices=("sweep", "job"),
        default="sweep",
        help="sweep: all jobs in one process (local backend); job: a process per job (Slurm, pack: 1)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.sweep).read_text())
    overrides = ["runtime.device=cpu", f"runtime.num_threads={args.threads}", *args.overrides]
    if not os.environ.get("MEDMNIST_ROOT") and "data_root" not in raw:
        raise SystemExit("set MEDMNIST_ROOT to the folder holding the MedMNIST files (e.g. ../shared/data)")
    results = {}
    if args.before:
        checkout = worktree_at(args.before)
        try:
            results["before"] = measure(checkout, raw, overrides, "before", args.mode)
        finally:
            drop_worktree(checkout)
    if not args.skip_after:
        checkout = worktree_at(args.after) if args.after else PROJECT_ROOT
        try:
            results["after"] = measure(checkout, raw, overrides, "after", args.mode)
        finally:
            if args.after:
                drop_worktree(checkout)
    for label, result in results.items():
        print(f"{label}: {json.dumps(result)}", flush=True)
    summary = {f"train_fraction_{label}": result["train_fraction"] for label, result in results.items()}
    flat = {
        label: {name: value for name, value in result.items() if not isinstance(value, dict)}
        for label, result in results.items()
    }
    summary.update(
        {
            f"{name}_{label}": value
            for label, result in flat.items()
            for name, value in result.items()
            if name != "train_fraction"
        }
    )
    summary.update(
        sweep=Path(args.sweep).name, mode=args.mode, overrides=args.overrides, threads=args.threads, before=args.before
    )
    if "after" in results:
        summary["accepted"] = bool(results["after"]["train_fraction"] >= 0.6)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
