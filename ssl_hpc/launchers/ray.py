"""The Ray backend: the sweep's jobs as Ray tasks, fine-tune tasks waiting for their pretraining task.

``python launch/sweep.py SWEEP.yaml --backend ray`` runs every job through :func:`ssl_hpc.runner.run_job`
(same keys, tags, resume and skip rules as the local backend) as one Ray task asking for
``ray.cpus_per_job`` CPUs and ``ray.gpus_per_job`` GPUs -- fractional, so ``0.25`` packs four 28 px runs
on one GPU. A fine-tune task receives its pretraining task's result (an ``ObjectRef``) as an argument,
so Ray starts it only once the pretraining task is done, and it runs only if that one finished.

``ray.address: null`` starts a private local Ray instance (127.0.0.1, no dashboard) for the sweep and
stops it afterwards; ``auto`` joins the running instance this machine belongs to (e.g. one started
inside a Slurm allocation, see the README), ``ray://host:10001`` a remote one. A task whose worker dies
(OOM-killed, node lost) is retried ``ray.max_retries`` times and resumes from its last checkpoint; an
exception is not retried: the run is FAILED in MLflow.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssl_hpc.config import ConfigError, RaySettings
from ssl_hpc.jobs import Job, order_jobs
from ssl_hpc.runner import run_job
from ssl_hpc.tracking import multi_node_problem
from ssl_hpc.train.handle import RunContext

log = logging.getLogger(__name__)

OK = ("finished", "skipped")


def ray_task(job: Job, context: RunContext, *dependencies: str) -> str:
    """One job on a Ray worker; ``dependencies`` are the outcomes of the jobs it depends on."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if any(outcome not in OK for outcome in dependencies):
        log.warning("%s: not run, a job it depends on did not finish (%s)", job.key, dependencies)
        return "blocked"
    try:
        import ray

        node = ray.get_runtime_context().get_node_id()
        context = _with_tags(context, {"ray_node_id": node})
    except Exception:  # noqa: BLE001 - tags are a courtesy
        pass
    try:
        return run_job(job, context)
    except Exception:
        log.exception("job %s (%s) failed", job.key, job.describe())  # MLflow has the run FAILED + traceback
        return "failed"


def _with_tags(context: RunContext, tags: dict[str, str]) -> RunContext:
    from dataclasses import replace

    return replace(context, extra_tags={**context.extra_tags, **tags})


def worker_env(project_root: Path, context: RunContext) -> dict[str, str]:
    """What Ray workers need to import the package and find the data, wherever they were started."""
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": f"{project_root}{os.pathsep + path if path else ''}", "MEDMNIST_ROOT": str(context.data_root)}
    if context.runtime.num_threads:
        env["OMP_NUM_THREADS"] = str(context.runtime.num_threads)
    return env


def check_ray_tracking(tracking_uri: str, node_addresses: set[str], here: str) -> None:
    """A Ray cluster with nodes on other machines needs a tracking server they all reach (a SQLite file on a
    shared filesystem, written by every node, corrupts)."""
    elsewhere = sorted(node_addresses - {here, "127.0.0.1"})
    problem = multi_node_problem(tracking_uri) if elsewhere else None
    if problem:
        raise ConfigError(
            f"tracking: {problem}, and the Ray cluster at ray.address has nodes on other machines "
            f"({', '.join(elsewhere)}). Serve MLflow on an address they reach (MLFLOW_HOST=... mlflow/serve.sh) and "
            "export MLFLOW_TRACKING_URI=http://<that address>:5000."
        )


@contextmanager
def ray_session(settings: RaySettings, project_root: Path, context: RunContext) -> Iterator[None]:
    """Connects to (or starts, then stops) the Ray instance the settings name."""
    import ray

    if ray.is_initialized():
        yield
        return
    runtime_env = {"env_vars": worker_env(project_root, context)}
    try:
        if settings.address:
            ray.init(address=settings.address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(
                num_cpus=settings.num_cpus,
                num_gpus=settings.num_gpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env=runtime_env,
                log_to_driver=True,
            )
    except ConnectionError as error:
        raise ConfigError(f"ray.address: cannot connect to a Ray cluster at {settings.address!r} ({error})") from None
    try:
        if settings.address:
            nodes = {node["NodeManagerAddress"] for node in ray.nodes() if node.get("Alive")}
            check_ray_tracking(context.tracking_uri, nodes, ray.util.get_node_ip_address())
        yield
    finally:
        ray.shutdown()


def run_ray(jobs: list[Job], context: RunContext, settings: RaySettings, project_root: Path) -> dict[str, str]:
    """Runs every job as a Ray task in dependency order; returns key -> outcome (as the local backend)."""
    import ray

    with ray_session(settings, project_root, context):
        task = ray.remote(
            num_cpus=settings.cpus_per_job,
            num_gpus=settings.gpus_per_job,
            max_retries=settings.max_retries,
            retry_exceptions=False,
        )(ray_task)
        refs: dict[str, ray.ObjectRef] = {}
        for job in order_jobs(jobs):
            dependencies = [refs[key] for key in job.depends_on if key in refs]
            refs[job.key] = task.options(name=f"{context.sweep_name}-{job.key}").remote(job, context, *dependencies)
        outcomes: dict[str, str] = {}
        for key, ref in refs.items():
            try:
                outcomes[key] = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker died more than max_retries times
                log.error("job %s: %s", key, error)
                outcomes[key] = "failed"
    return outcomes
