"""Submitting a sweep from the login node: what is missing, in arrays, with dependencies; then it returns.

``python launch/sweep.py SWEEP.yaml --backend slurm`` on a login node:

1. Asks MLflow (one query) which keys are FINISHED and Slurm (one ``squeue`` call) which of the
   sweep's earlier submissions are still pending or running. Only keys that are neither are submitted.
2. Submits one job array for the pretraining jobs, then one array per pretraining job for the
   fine-tune jobs that need it, held by ``--dependency=afterok:<pretrain array>_<index>`` (Slurm holds
   them, nothing polls from the login node; ``--kill-on-invalid-dep=yes`` cancels them if it fails),
   and one array for the jobs without dependencies. Arrays are split to fit ``MaxArraySize`` and
   throttled with ``%<array_parallelism>``. A final aggregation job waits (``afterany``) for all.
3. Records every submission (key -> job id, array index) in ``<output_root>/slurm/submissions.jsonl``
   and returns. Logs land in ``<output_root>/slurm/logs/``.

Nothing here prints: :func:`submit_sweep` returns a :class:`SubmitReport` and :func:`format_report`
its text, for the command line to show.
"""

from __future__ import annotations

import getpass
import logging
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ssl_hpc.config import ConfigError, SlurmProfile, SweepConfig, load_sweep
from ssl_hpc.files import atomic_write_text
from ssl_hpc.jobs import Job
from ssl_hpc.launchers.slurm.node import run_aggregation
from ssl_hpc.launchers.slurm.plan import Plan, plan_submission
from ssl_hpc.launchers.slurm.queries import ALIVE, QueueEntry, base_ids, max_array_size, queued_comments, squeue
from ssl_hpc.launchers.slurm.records import (
    AGGREGATE_KEY,
    LOGS,
    Intent,
    Submission,
    append_intent,
    append_records,
    close_intents,
    load_records,
    open_intents,
    slurm_dir,
    submission_lock,
)
from ssl_hpc.launchers.slurm.sbatch import executor_for, submit_array
from ssl_hpc.runner import RunLock
from ssl_hpc.tracking import FINISHED, SweepTracker, multi_node_problem
from ssl_hpc.train.handle import RunContext

log = logging.getLogger(__name__)


@dataclass
class SubmitReport:
    """What one sweep command submitted, found already queued or done, and left out (and why)."""

    submitted: list[Submission] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)
    aggregate: Submission | None = None
    not_submitted: dict[str, str] = field(default_factory=dict)  # key -> why
    messages: list[str] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """Whether sbatch refused an array (what did go in is queued and recorded)."""
        return any(message.startswith("sbatch refused") for message in self.messages)


def check_tracking(tracking_uri: str, profile: SlurmProfile, profile_name: str) -> None:
    """Jobs on other nodes can neither share a SQLite file safely nor reach the login node's 127.0.0.1."""
    problem = None if profile.single_node else multi_node_problem(tracking_uri)
    if problem:
        raise ConfigError(
            f"tracking: {problem} (profile {profile_name!r} is not single_node). Start the tracking server on "
            f"the login node (MLFLOW_HOST=<address the nodes reach> mlflow/serve.sh) and export "
            f"MLFLOW_TRACKING_URI=http://<that address>:5000 before submitting."
        )


def resolved_sweep_file(sweep: SweepConfig, output_root: Path) -> Path | None:
    """The sweep as resolved here (overrides applied), for the aggregation job; ``None`` if it does not round-trip."""
    path = slurm_dir(output_root) / "sweep.yaml"
    # Atomically: an aggregation job of an earlier submission may be reading it right now.
    atomic_write_text(path, yaml.safe_dump(sweep.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    try:
        if load_sweep(path) == sweep:
            return path
    except ConfigError as error:
        log.warning("the resolved sweep does not load back (%s)", error)
    return None


def submit_sweep(
    sweep: SweepConfig,
    jobs: list[Job],
    context: RunContext,
    profile: SlurmProfile,
    project_root: Path,
    profile_name: str = "",
) -> SubmitReport:
    """Submits what is missing and returns; see the module docstring."""
    check_tracking(context.tracking_uri, profile, profile_name)
    folder = slurm_dir(context.output_root)
    report = SubmitReport()
    with submission_lock(context.output_root):
        tracker = SweepTracker(context.tracking_uri, sweep.name)  # creates the store here, not in 100 jobs at once
        runs = tracker.runs_by_key()
        finished = {key for key, run in runs.items() if run.info.status == FINISHED}
        records = recover_unrecorded(context.output_root, load_records(context.output_root))
        need_queue = profile.max_submit_jobs is not None
        queue = squeue(user=getpass.getuser()) if need_queue else squeue([r.job_id for r in records.values()])
        alive = {
            key: record.job_id
            for key, record in records.items()
            if key != AGGREGATE_KEY and queue.get(record.job_id) and queue[record.job_id].state in ALIVE
        }
        locked = {job.key for job in jobs if job.key not in alive and RunLock.held(context.output_root / job.key)}
        plan = plan_submission(jobs, finished, alive, locked, profile.pack, max_array_size(profile), sweep.name)
        report.plan = plan
        if not plan.arrays:
            return report
        budget = None
        if profile.max_submit_jobs is not None:  # every array task counts; keep a place for the aggregation job
            budget = (
                profile.max_submit_jobs
                - sum(1 for entry in queue.values() if entry.state in ALIVE)
                - (1 if aggregation_available(profile) else 0)
            )
        logs = folder / LOGS
        new_ids: dict[str, str] = {}
        blocked = False
        for array in plan.arrays:
            keys = [job.key for pack in array.packs for job in pack]
            if blocked:
                report.not_submitted.update({key: "an earlier submission failed" for key in keys})
                continue
            after = None
            if array.after is not None:
                after = new_ids.get(array.after) or array.after_job
                if after is None:
                    report.not_submitted.update(
                        {key: f"its pretraining job {array.after} was not submitted" for key in keys}
                    )
                    continue
            packs = array.packs
            if budget is not None:
                if budget <= 0:
                    report.not_submitted.update(
                        {key: f"MaxSubmitJobs ({profile.max_submit_jobs}) reached" for key in keys}
                    )
                    continue
                if len(packs) > budget:
                    for pack in packs[budget:]:
                        report.not_submitted.update(
                            {job.key: f"MaxSubmitJobs ({profile.max_submit_jobs}) reached" for job in pack}
                        )
                    packs = packs[:budget]
                budget -= len(packs)
            intent = Intent(
                uuid.uuid4().hex[:16],
                array.stage,
                f"afterok:{after}" if after else "",
                tuple(tuple(job.key for job in pack) for pack in packs),
                time.time(),
            )
            append_intent(context.output_root, intent)
            executor = executor_for(logs, profile, project_root, array.name, after, submission_id=intent.submission_id)
            try:
                job_ids = submit_array(executor, packs, context, profile.cpus_per_job)
            except Exception as error:  # sbatch refused (a site limit, a bad partition...): keep what went in
                close_intents(context.output_root, [intent.submission_id])
                message = str(error).strip().splitlines()
                report.messages.append(f"sbatch refused array {array.name}: {message[-1] if message else error}")
                report.not_submitted.update({key: "sbatch refused it" for key in keys})
                blocked = True
                continue
            now = time.time()
            batch = []
            for job_id, pack in zip(job_ids, packs):
                array_id, _, index = job_id.partition("_")
                for job in pack:
                    new_ids[job.key] = job_id
                    batch.append(
                        Submission(
                            job.key,
                            job_id,
                            array_id,
                            int(index) if index else None,
                            array.stage,
                            tuple(j.key for j in pack),
                            intent.dependency,
                            now,
                            intent.submission_id,
                        )
                    )
            append_records(context.output_root, batch)
            close_intents(context.output_root, [intent.submission_id])
            report.submitted += batch
        if report.submitted:
            report.aggregate = _submit_aggregation(
                sweep, context, profile, project_root, records, queue, [*alive.values(), *new_ids.values()], report
            )
    return report


def recover_unrecorded(output_root: Path, records: dict[str, Submission]) -> dict[str, Submission]:
    """Records for the jobs of sbatch calls whose sweep command died before writing them (found in Slurm's
    queue by the submission id in their comment), so that they are not queued a second time."""
    pending = open_intents(output_root, records.values())
    if not pending:
        return records
    comments = queued_comments(getpass.getuser())
    found: list[Submission] = []
    for intent in pending:
        for job_id, comment in comments.items():
            if comment.split()[-1:] != [intent.submission_id]:
                continue
            array_id, _, index = job_id.partition("_")
            if (int(index) if index else 0) >= len(intent.packs):
                log.warning("job %s carries submission %s but no pack of it: left alone", job_id, intent.submission_id)
                continue
            pack = intent.packs[int(index) if index else 0]
            found += [
                Submission(
                    key,
                    job_id,
                    array_id,
                    int(index) if index else None,
                    intent.stage,
                    pack,
                    intent.dependency,
                    intent.written_at,
                    intent.submission_id,
                )
                for key in pack
            ]
    if found:
        log.warning(
            "%d key(s) were queued by a sweep command that stopped before recording them; recorded now: %s",
            len(found),
            ", ".join(sorted({record.job_id for record in found})),
        )
        append_records(output_root, found)
    close_intents(output_root, [intent.submission_id for intent in pending])
    return load_records(output_root)


def aggregation_available(profile: SlurmProfile) -> bool:
    """Whether a submission ends with an aggregation job (it takes a place in the queue)."""
    return profile.aggregate.enabled


def _submit_aggregation(
    sweep: SweepConfig,
    context: RunContext,
    profile: SlurmProfile,
    project_root: Path,
    records: Mapping[str, Submission],
    queue: Mapping[str, QueueEntry],
    job_ids: list[str],
    report: SubmitReport,
) -> Submission | None:
    if not profile.aggregate.enabled:
        return None
    sweep_file = resolved_sweep_file(sweep, context.output_root)
    if sweep_file is None:
        report.messages.append(
            "no aggregation job: the resolved sweep does not round-trip; "
            "run launch/aggregate.py yourself once the jobs are done"
        )
        return None
    previous = records.get(AGGREGATE_KEY)
    if previous is not None and previous.job_id in queue and queue[previous.job_id].state == "PENDING":
        subprocess.run(["scancel", previous.job_id], capture_output=True)  # replaced by one that waits for all
    after = ":".join(base_ids(job_ids))
    executor = executor_for(
        slurm_dir(context.output_root) / LOGS,
        profile,
        project_root,
        f"{sweep.name}-aggregate",
        after,
        after_kind="afterany",
        aggregate=True,
    )
    try:
        job = executor.submit(run_aggregation, str(sweep_file), str(project_root), context.tracking_uri)
    except Exception as error:  # noqa: BLE001 - the runs are queued; aggregation can be run by hand
        report.messages.append(f"the aggregation job was not submitted: {str(error).strip()[-300:]}")
        return None
    record = Submission(AGGREGATE_KEY, job.job_id, job.job_id, None, "aggregate", (), f"afterany:{after}", time.time())
    append_records(context.output_root, [record])
    return record


def format_report(report: SubmitReport, sweep_name: str, output_root: Path) -> str:
    """The report as the sweep command shows it: one block per array, what was left out and why, a summary."""
    plan = report.plan
    lines = []
    by_array: dict[str, list[Submission]] = {}
    for record in report.submitted:
        by_array.setdefault(record.array_id, []).append(record)
    for array_id, records in by_array.items():
        tasks = sorted({record.job_id for record in records})
        stage = records[0].stage
        dependency = f"  after {records[0].dependency}" if records[0].dependency else ""
        lines.append(
            f"slurm job {array_id}: {stage}, {len(records)} runs in {len(tasks)} "
            f"{'tasks' if len(tasks) > 1 else 'task'}{dependency}"
        )
        for record in records:
            lines.append(f"  {record.job_id:14} {record.key}")
    if report.aggregate is not None:
        lines.append(f"slurm job {report.aggregate.job_id}: aggregate  after {report.aggregate.dependency}")
    for key, why in report.not_submitted.items():
        lines.append(f"not submitted {key}: {why}")
    lines += report.messages
    lines.append(
        f"{sweep_name}: {len(report.submitted)} submitted, {len(plan.queued)} already queued, "
        f"{len(plan.finished)} finished, {len(plan.running_elsewhere)} running elsewhere, "
        f"{len(report.not_submitted)} not submitted"
    )
    lines.append(f"logs: {slurm_dir(output_root) / LOGS}")
    return "\n".join(lines)
