"""What runs on the compute node: the callables submitit pickles on the login node and calls on the node.

:class:`SlurmTask` runs :func:`ssl_hpc.runner.run_job` (usually one job; ``pack`` K of them
in parallel in one allocation). It is a submitit ``Checkpointable``: on Slurm's USR2 (preemption, or
``signal_delay_s`` before the time limit) submitit calls :meth:`SlurmTask.checkpoint` and requeues the job
with ``scontrol requeue``; the last epoch checkpoint is already on disk (written atomically after every
epoch), so the requeued job resumes from it into the same MLflow run. An exception is not retried: the
run is FAILED in MLflow, the job FAILED in Slurm, and ``--status`` says why.

submitit unpickles :class:`SlurmTask` and :func:`run_aggregation` on the node by their module path, so they
must stay importable from here (``ssl_hpc.launchers.slurm.node``); the package re-exports them too, for
jobs pickled as ``ssl_hpc.launchers.slurm.SlurmTask`` before the backend was split into modules.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit

from ssl_hpc.config import load_sweep
from ssl_hpc.jobs import Job, check_registered_names
from ssl_hpc.runner import run_job_when_free
from ssl_hpc.train.handle import RunContext

log = logging.getLogger(__name__)

BUSY_WAIT_S = 90.0
BUSY_POLL_S = 3.0


def slurm_tags(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The Slurm identity of the running job, as MLflow tags (same values after a requeue)."""
    job_id = environ.get("SLURM_JOB_ID", "")
    array_id, index = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    return {
        "slurm_job_id": f"{array_id}_{index}" if array_id and index else job_id,
        "slurm_array_job_id": array_id or job_id,
        "slurm_array_index": index if index is not None else "none",
        "slurm_raw_job_id": job_id,
        "slurm_restart_count": environ.get("SLURM_RESTART_COUNT", "0"),
        "slurm_node": socket.gethostname(),
        "slurm_cluster": environ.get("SLURM_CLUSTER_NAME", ""),
        "slurm_partition": environ.get("SLURM_JOB_PARTITION", ""),
    }


def _run_waiting_for_lock(job: Job, context: RunContext) -> str:
    """``run_job``, waiting a little if the previous attempt of this job (just requeued) still holds its lock."""
    return run_job_when_free(job, context, poll_s=BUSY_POLL_S, timeout_s=BUSY_WAIT_S)


_CHILDREN: list[multiprocessing.process.BaseProcess] = []  # a pack's worker processes (never pickled)


def _pack_child(job: Job, context: RunContext, threads: int, results: Any) -> None:
    # Slurm signals every process of the step. Like submitit in the parent, ignore SIGTERM (preemption
    # announces itself with it; the kill follows anyway) and leave USR2 to the parent, which checkpoints,
    # stops us with SIGINT (KeyboardInterrupt: the run is marked KILLED) and requeues the allocation.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_threads(context, threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s [{job.key}] %(name)s: %(message)s")
    try:
        outcome = _run_waiting_for_lock(job, context)
    except BaseException as error:  # run_job marked the run FAILED / KILLED already
        log.exception("job %s failed", job.key)
        outcome = "killed" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
    results.put((job.key, outcome))


def _set_threads(context: RunContext, threads: int) -> None:
    if not context.runtime.num_threads:
        import torch

        torch.set_num_threads(max(1, threads))


class SlurmTask(submitit.helpers.Checkpointable):
    """What one Slurm job (one array task) runs: one job, or a pack of K jobs side by side (``pack: K``).

    Fails (non-zero exit) unless every job finished, so that Slurm holds or cancels what depends on it.
    """

    def __call__(self, jobs: Sequence[Job], context: RunContext, cpus: int = 1) -> dict[str, str]:
        context = replace(context, extra_tags={**context.extra_tags, **slurm_tags(), "slurm_pack_size": str(len(jobs))})
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("slurm job %s: %s", context.extra_tags["slurm_job_id"], ", ".join(job.key for job in jobs))
        if len(jobs) == 1:
            _set_threads(context, cpus)
            outcomes = {jobs[0].key: _run_waiting_for_lock(jobs[0], context)}
        else:
            outcomes = self._run_pack(jobs, context, cpus)
        bad = {key: outcome for key, outcome in outcomes.items() if outcome not in ("finished", "skipped")}
        if bad:
            # A non-zero exit: Slurm marks the job FAILED and cancels the jobs that depended on it.
            raise RuntimeError(f"jobs did not finish: {bad}")
        return outcomes

    @staticmethod
    def _run_pack(jobs: Sequence[Job], context: RunContext, cpus: int) -> dict[str, str]:
        spawn = multiprocessing.get_context("spawn")
        results = spawn.SimpleQueue()
        threads = max(1, cpus // len(jobs))
        _CHILDREN.clear()
        for job in jobs:
            child = spawn.Process(target=_pack_child, args=(job, context, threads, results), name=f"run-{job.key}")
            child.start()
            _CHILDREN.append(child)
        for child in _CHILDREN:
            child.join()
        outcomes = {job.key: "failed" for job in jobs}  # a child killed outright reports nothing
        while not results.empty():
            key, outcome = results.get()
            outcomes[key] = outcome
        _CHILDREN.clear()
        return outcomes

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on USR2, before it requeues this job.

        The state to resume from is each run's last epoch checkpoint, already on disk: nothing to save
        here beyond stopping a pack's workers cleanly (their MLflow runs become KILLED, then resume).
        The requeued job calls this task again with the same arguments.
        """
        for child in list(_CHILDREN):
            if child.is_alive() and child.pid:
                os.kill(child.pid, signal.SIGINT)
        for child in list(_CHILDREN):
            child.join(timeout=30)
        return submitit.helpers.DelayedSubmission(SlurmTask(), *args, **kwargs)


def run_aggregation(sweep_file: str, project_root: str, tracking_uri: str) -> int:
    """The final job: the aggregation step on the resolved sweep, logging to the sweep's tracking store.
    Returns 0, or 1 when nothing FINISHED is there to aggregate (said in the log, not an error of this job)."""
    from ssl_hpc.aggregate import AggregationError, aggregate_sweep

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # proxied artifact URIs are resolved against it
    sweep = load_sweep(sweep_file)
    check_registered_names(sweep, sweep_file)
    try:
        result = aggregate_sweep(sweep, Path(project_root), tracking_uri=tracking_uri)
    except AggregationError as error:
        log.warning("nothing to aggregate: %s", error)
        return 1
    for skip in result.skipped:
        log.warning("skipped fusion %s in %s (seed %s): %s", skip.column, skip.table, skip.seed, skip.reason)
    log.info("results: %s; MLflow run %s (experiment %r)", result.results_dir, result.run_id, sweep.name)
    return 0
