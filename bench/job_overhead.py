#!/usr/bin/env python
"""Where a short job's time goes, before and after the fixed costs were cut (issue 16, item 2).

Each job of the sweep (default ``sweeps/smoke_ssl.yaml``) runs in a fresh Python process, as one Slurm
array task does: interpreter start, imports, data loading, the MLflow run, the leakage guard, training,
evaluation, CAMs and uploads all count. The jobs log to a temporary SQLite store; outputs go to a
temporary folder; nothing is written into the checkout. ``--before REV`` also measures the code at
``REV`` from a temporary git worktree (``git worktree add``), removed afterwards.

Figures: ``train_fraction`` = sum of the runs' training seconds / sum of the jobs' wall seconds (each
job's process measured from spawn to exit). Training seconds are ``seconds_train`` where the code logs it
(the timed phases of :mod:`ssl_hpc.train.phases`), else ``train_seconds`` (the epochs, plus the feature
cache), which the code before the phases logged; ``train_fraction_epochs`` uses ``train_seconds`` for both,
the like-for-like comparison. The ``seconds_*`` phases are summed over the runs that logged them.

Last output line: a JSON object with ``train_fraction_before``, ``train_fraction_after`` and more.

Usage: MEDMNIST_ROOT=../shared/data python bench/job_overhead.py [--before REV] [--threads 2] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PHASES = ("setup", "train", "eval", "cam", "upload")

# What a child process runs: one job of the sweep, through the project's own runner (the one at argv[1]).
CHILD = """
import json, sys
from pathlib import Path
project, spec = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
sys.path.insert(0, project)
from ssl_hpc.config import apply_overrides, default_data_root, validate_sweep
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.runner import run_job
from ssl_hpc.train.handle import RunContext
sweep = validate_sweep(apply_overrides(spec["raw"], spec["overrides"]), source="bench job_overhead")
(job,) = [job for job in expand_jobs(sweep) if job.key == spec["key"]]
context = RunContext(
    sweep_name=sweep.name, tracking_uri=spec["tracking_uri"], output_root=Path(spec["output_root"]),
    data_root=default_data_root(sweep.data_root), runtime=sweep.runtime, datasets=sweep.datasets, cam=sweep.cam,
)
outcome = run_job(job, context)
sys.exit(0 if outcome == "finished" else 3)
"""

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


def measure(project: Path, raw: dict, overrides: list[str], label: str) -> dict:
    """Runs every job of the sweep with ``project``'s code, one process each; returns the sums."""
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
        python = [sys.executable, "-c"]
        plan = json.loads(output([*python, PLAN, str(project), str(spec_path)]))
        walls: dict[str, float] = {}
        for key, stage, description in plan["jobs"]:
            spec_path.write_text(json.dumps({**spec, "key": key}))
            started = time.perf_counter()
            result = subprocess.run(
                [*python, CHILD, str(project), str(spec_path)], capture_output=True, text=True, cwd=folder
            )
            walls[key] = time.perf_counter() - started
            if result.returncode != 0:
                raise SystemExit(f"{label}: job {key} ({description}) failed:\n{result.stderr[-4000:]}")
            print(f"{label:>6} {stage:8} {walls[key]:6.1f} s  {description}", flush=True)
        metrics = json.loads(output([*python, READ, spec["tracking_uri"], plan["name"]]))
    stages = {key: stage for key, stage, _ in plan["jobs"]}
    return {
        **summarise(walls, metrics),
        **{
            stage: summarise({key: wall for key, wall in walls.items() if stages[key] == stage}, metrics)
            for stage in sorted(set(stages.values()))
        },
    }


def output(command: list[str]) -> str:
    """The command's stdout; its stderr in the error when it fails."""
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{command[:2]} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def summarise(walls: dict[str, float], metrics: dict[str, dict[str, float]]) -> dict:
    wall = sum(walls.values())
    epochs = sum(metrics[key].get("train_seconds", 0.0) for key in walls)
    phases = {phase: sum(metrics[key].get(f"seconds_{phase}", 0.0) for key in walls) for phase in PHASES}
    timed = all("seconds_train" in metrics[key] for key in walls)
    train = phases["train"] if timed else epochs
    return {
        "jobs": len(walls),
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
            results["before"] = measure(checkout, raw, overrides, "before")
        finally:
            drop_worktree(checkout)
    if not args.skip_after:
        checkout = worktree_at(args.after) if args.after else PROJECT_ROOT
        try:
            results["after"] = measure(checkout, raw, overrides, "after")
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
    summary.update(sweep=Path(args.sweep).name, overrides=args.overrides, threads=args.threads, before=args.before)
    if "after" in results:
        summary["accepted"] = bool(results["after"]["train_fraction"] >= 0.6)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
