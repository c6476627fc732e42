"""The local backend: every job in dependency order, in this process, with a progress bar."""

from __future__ import annotations

import logging

from tqdm.auto import tqdm

from ssl_hpc.data.loading import DatasetCache
from ssl_hpc.jobs import Job, order_jobs
from ssl_hpc.runner import run_job
from ssl_hpc.train.handle import RunContext

log = logging.getLogger(__name__)


def run_local(jobs: list[Job], context: RunContext) -> dict[str, str]:
    """Runs each job once its dependencies finished; returns key -> outcome.

    Outcomes: ``finished``, ``skipped`` (already FINISHED in MLflow), ``busy`` (another process holds
    it), ``failed``, ``blocked`` (a dependency did not finish).
    """
    cache = DatasetCache(context.data_root, context.datasets)
    outcomes: dict[str, str] = {}
    with tqdm(total=len(jobs), desc=context.sweep_name, unit="job", disable=not context.progress) as bar:
        for job in order_jobs(jobs):
            bar.set_postfix_str(job.describe(), refresh=True)
            if any(outcomes.get(dependency) not in ("finished", "skipped") for dependency in job.depends_on):
                outcomes[job.key] = "blocked"
            else:
                try:
                    outcomes[job.key] = run_job(job, context, cache)
                except Exception:
                    log.exception("job %s (%s) failed", job.key, job.describe())
                    outcomes[job.key] = "failed"
            bar.update(1)
    return outcomes
