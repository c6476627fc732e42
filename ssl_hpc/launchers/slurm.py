"""The Slurm backend (submitit): arrays per stage, dependencies, requeue on preemption, idempotent re-runs.

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

On the node, :class:`SlurmTask` runs :func:`ssl_hpc.runner.run_job` (usually one job; ``pack`` K of them
in parallel in one allocation). It is a submitit ``Checkpointable``: on Slurm's USR2 (preemption, or
``signal_delay_s`` before the time limit) submitit calls :meth:`SlurmTask.checkpoint` and requeues the job
with ``scontrol requeue``; the last epoch checkpoint is already on disk (written atomically after every
epoch), so the requeued job resumes from it into the same MLflow run. An exception is not retried: the
run is FAILED in MLflow, the job FAILED in Slurm, and ``--status`` says why.
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import logging
import multiprocessing
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import submitit
import yaml

from ssl_hpc.config import ConfigError, SweepConfig, load_sweep
from ssl_hpc.files import atomic_write_text, exclusive_lock
from ssl_hpc.jobs import Job, order_jobs
from ssl_hpc.launchers.settings import SlurmProfile
from ssl_hpc.runner import RunContext, RunLock, run_job_when_free
from ssl_hpc.status import JobStatus, classify
from ssl_hpc.tracking import FAILED, FINISHED, SweepTracker, local_database
from ssl_hpc.train.loop import LAST

log = logging.getLogger(__name__)

SLURM_DIR = "slurm"
RECORDS = "submissions.jsonl"
LOGS = "logs"
AGGREGATE_KEY = "aggregate"
# States in which a job still holds a place in the queue (it will run, or runs).
ALIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
    "POWER_UP_NODE",
}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}
# sacct's terminal states, as --status reports them.
REASONS = {
    "OUT_OF_MEMORY": "OOM",
    "TIMEOUT": "TIMEOUT",
    "PREEMPTED": "PREEMPTED",
    "NODE_FAIL": "NODE_FAIL",
    "BOOT_FAIL": "BOOT_FAIL",
    "DEADLINE": "DEADLINE",
    "FAILED": "FAILED",
    "CANCELLED": "CANCELLED",
    "REVOKED": "REVOKED",
}
BUSY_WAIT_S = 90.0
BUSY_POLL_S = 3.0


def slurm_dir(output_root: Path) -> Path:
    return Path(output_root) / SLURM_DIR


# --------------------------------------------------------------------------- on the node


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
    """The final job: ``launch/aggregate.py`` on the resolved sweep, logging to the sweep's tracking store."""
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from ssl_hpc.cli import aggregate_main

    code = aggregate_main([sweep_file], project_root=Path(project_root))
    if code not in (0, 1):  # 1: nothing FINISHED to aggregate -- said in the log, not an error of this job
        raise RuntimeError(f"aggregation exited with {code}")
    return code


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Submission:
    """One key's submission: which Slurm job (array task) runs it."""

    key: str
    job_id: str  # "123_4" for an array task, "123" for a single job
    array_id: str
    index: int | None
    stage: str
    pack: tuple[str, ...] = ()
    dependency: str = ""
    submitted_at: float = 0.0


def records_path(output_root: Path) -> Path:
    return slurm_dir(output_root) / RECORDS


def load_records(output_root: Path) -> dict[str, Submission]:
    """key -> its latest submission (the file is append-only)."""
    path = records_path(output_root)
    if not path.is_file():
        return {}
    records: dict[str, Submission] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            raw["pack"] = tuple(raw.get("pack", ()))
            record = Submission(**raw)
        except (ValueError, TypeError):
            log.warning("ignoring a malformed line of %s: %r", path, line[:200])
            continue
        records[record.key] = record
    return records


def append_records(output_root: Path, records: Iterable[Submission]) -> None:
    path = records_path(output_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        for record in records:
            file.write(json.dumps(asdict(record)) + "\n")
        file.flush()
        os.fsync(file.fileno())


@contextmanager
def submission_lock(output_root: Path):
    """Two sweep commands on the same sweep at once would both submit the missing keys: one waits."""
    path = slurm_dir(output_root) / "submit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):
        yield


# --------------------------------------------------------------------------- asking Slurm (batched)


@dataclass(frozen=True)
class QueueEntry:
    job_id: str
    state: str
    reason: str = ""
    node: str = ""


@dataclass(frozen=True)
class AccountingEntry:
    job_id: str
    state: str
    exit_code: str = ""
    reason: str = ""
    node: str = ""
    start: str = ""
    end: str = ""


class SlurmError(RuntimeError):
    pass


def _command(args: list[str], timeout: float = 60) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{args[0]} not found: is this a Slurm login node (and SLURM_CONF set)?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(args[:3])}... did not answer within {timeout:.0f}s") from None
    if result.returncode != 0:
        raise SlurmError(f"{' '.join(args[:4])}... failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def base_ids(job_ids: Iterable[str]) -> list[str]:
    return sorted({job_id.split("_")[0] for job_id in job_ids if job_id}, key=lambda x: (len(x), x))


def expand_job_id(job_id: str) -> list[str]:
    """``123_[0-2,5%2]`` -> ``123_0 123_1 123_2 123_5``; ``123_4`` and ``123`` as they are."""
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id]
    ids = []
    for part in match[2].split("%")[0].split(","):
        low, _, high = part.partition("-")
        ids += [f"{match[1]}_{index}" for index in range(int(low), int(high or low) + 1)]
    return ids


def squeue(job_ids: Iterable[str] | None = None, user: str | None = None) -> dict[str, QueueEntry]:
    """ONE ``squeue`` call: job (array task) id -> its queue entry, for the given jobs or all of a user's."""
    args = ["squeue", "-h", "-r", "-o", "%i|%T|%r|%N"]
    if job_ids is not None:
        ids = base_ids(job_ids)
        if not ids:
            return {}
        args += ["-j", ",".join(ids)]
    if user is not None:
        args += ["-u", user]
    entries: dict[str, QueueEntry] = {}
    try:
        out = _command(args)
    except SlurmError as error:
        # Asked for one job id that slurmctld has already purged (MinJobAge), squeue fails instead of listing
        # nothing: that job is simply no longer queued.
        if job_ids is not None and len(args[args.index("-j") + 1].split(",")) == 1 and "Invalid job id" in str(error):
            return {}
        raise
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2:
            continue
        for job_id in expand_job_id(parts[0]):
            entries[job_id] = QueueEntry(
                job_id, parts[1], parts[2] if len(parts) > 2 else "", parts[3] if len(parts) > 3 else ""
            )
    return entries


def sacct(job_ids: Iterable[str]) -> dict[str, AccountingEntry]:
    """ONE ``sacct`` call: job (array task) id -> its latest allocation record (after requeues: the last)."""
    ids = base_ids(job_ids)
    if not ids:
        return {}
    out = _command(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(ids), "--format=JobID,State,ExitCode,Reason,NodeList,Start,End"]
    )
    return parse_sacct(out)


def parse_sacct(out: str) -> dict[str, AccountingEntry]:
    entries: dict[str, AccountingEntry] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 7 or "." in parts[0]:
            continue
        for job_id in expand_job_id(parts[0]):
            entries[job_id] = AccountingEntry(
                job_id, parts[1].split()[0] if parts[1] else "", parts[2], parts[3], parts[4], parts[5], parts[6]
            )
    return entries


def scontrol_config() -> dict[str, str]:
    out = _command(["scontrol", "show", "config"])
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


def max_array_size(profile: SlurmProfile) -> int:
    """How many tasks one array may have: the profile's, else the cluster's ``MaxArraySize``."""
    if profile.max_array_size:
        return profile.max_array_size
    try:
        return max(1, int(scontrol_config().get("MaxArraySize", "1001").split()[0]))
    except (SlurmError, ValueError):
        return 1000


def failure_reason(entry: AccountingEntry | None, run_tags: Mapping[str, str] | None = None) -> str:
    """Why a job ended without a FINISHED run: Slurm's state (OOM, TIMEOUT, PREEMPTED, NODE_FAIL...) and the
    last line of the exception MLflow recorded."""
    parts = []
    if entry is not None:
        state = REASONS.get(entry.state, entry.state)
        if state == "CANCELLED" and "Dependency" in entry.reason:
            state = "CANCELLED (its pretraining job failed)"
        elif state == "FAILED" and entry.exit_code and entry.exit_code != "0:0":
            state = f"FAILED (exit {entry.exit_code})"
        elif state == "COMPLETED":
            state = "COMPLETED without a FINISHED run"
        parts.append(f"slurm {entry.job_id} {state}")
    tags = run_tags or {}
    if tags.get("error"):
        lines = [line for line in tags["error"].strip().splitlines() if line.strip()]
        tail = lines[-1].strip() if lines else tags.get("error_type", "")
        parts.append(tail[:160])
    elif tags.get("error_type"):
        parts.append(tags["error_type"])
    return "; ".join(parts)


# --------------------------------------------------------------------------- status


def slurm_statuses(jobs: list[Job], tracker: SweepTracker | None, output_root: Path) -> list[JobStatus] | None:
    """One row per job from MLflow and Slurm (one ``squeue`` and one ``sacct`` call); ``None`` if the sweep
    was never submitted to Slurm."""
    records = load_records(output_root)
    if not records:
        return None
    runs = tracker.runs_by_key() if tracker is not None else {}
    submitted = {key: records[key] for key in (job.key for job in jobs) if key in records}
    squeue_answered = True
    try:
        queue = squeue([record.job_id for record in submitted.values()])
    except SlurmError as error:
        log.warning("squeue: %s", error)
        queue, squeue_answered = {}, False
    unfinished = [
        record.job_id
        for key, record in submitted.items()
        if record.job_id not in queue and not (runs.get(key) and runs[key].info.status == FINISHED)
    ]
    try:
        accounting = sacct(unfinished)
    except SlurmError as error:
        log.warning("sacct: %s", error)
        accounting = {}
    rows = []
    for job in jobs:
        run = runs.get(job.key)
        record = submitted.get(job.key)
        run_id = run.info.run_id if run else None
        workdir = output_root / job.key
        has_checkpoint = (workdir / LAST).is_file()
        if run is not None and run.info.status == FINISHED:
            rows.append(JobStatus(job, "finished", f"slurm {record.job_id}" if record else "", run_id))
            continue
        if record is not None and record.job_id in queue:
            entry = queue[record.job_id]
            state = "running" if entry.state in RUNNING_STATES else "pending"
            detail = f"slurm {entry.job_id} {entry.state}"
            if entry.reason and entry.reason != "None":
                detail += f" ({entry.reason})"
            if entry.node and state == "running":
                detail += f" on {entry.node}"
            if state == "pending" and run is not None:
                detail += "; will resume from checkpoint" if has_checkpoint else "; will restart"
            rows.append(JobStatus(job, state, detail, run_id))
            continue
        entry = accounting.get(record.job_id) if record is not None else None
        if entry is not None and entry.state in ALIVE:  # sacct() keeps the state's first word
            # Without squeue's answer, sacct still knows the job is queued or running: not a failure.
            state = "running" if entry.state in RUNNING_STATES else "pending"
            note = "" if squeue_answered else "; squeue did not answer, state from sacct"
            rows.append(JobStatus(job, state, f"slurm {entry.job_id} {entry.state}{note}", run_id))
            continue
        if record is not None and (entry is not None or (run is not None and run.info.status == FAILED)):
            reason = failure_reason(entry, run.data.tags if run else None)
            if run is not None and run.info.status != FAILED and has_checkpoint:
                reason += "; re-run the sweep to resume from its checkpoint"
            rows.append(JobStatus(job, "failed", reason, run_id))
            continue
        state, detail = classify(run, RunLock.held(workdir), has_checkpoint)
        if record is not None:
            detail = f"slurm {record.job_id}: no record yet; {detail}".rstrip("; ")
        rows.append(JobStatus(job, state, detail, run_id))
    return rows


# --------------------------------------------------------------------------- planning


@dataclass
class ArrayPlan:
    """One sbatch call: an array (or a single job) of packs sharing requirements and a dependency."""

    name: str
    stage: str
    packs: list[list[Job]]
    after: str | None = None  # the key of the pretraining job this array waits for (afterok)
    after_job: str | None = None  # ... when it is already queued: its Slurm job id


@dataclass
class Plan:
    finished: list[str] = field(default_factory=list)
    queued: dict[str, str] = field(default_factory=dict)  # key -> its live Slurm job
    running_elsewhere: list[str] = field(default_factory=list)
    arrays: list[ArrayPlan] = field(default_factory=list)

    @property
    def to_submit(self) -> list[str]:
        return [job.key for array in self.arrays for pack in array.packs for job in pack]


def _chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def plan_submission(
    jobs: list[Job],
    finished: set[str],
    alive: Mapping[str, str],
    locked: set[str],
    pack: int,
    array_size: int,
    sweep_name: str,
) -> Plan:
    """What to submit (pure): keys neither FINISHED nor alive nor running elsewhere, in arrays per stage.

    ``alive``: key -> its Slurm job id, for keys whose recorded job is pending or running.
    """
    plan = Plan()
    pretrain: list[Job] = []
    by_dependency: dict[str | None, list[Job]] = {}
    for job in order_jobs(jobs):
        if job.key in finished:
            plan.finished.append(job.key)
        elif job.key in alive:
            plan.queued[job.key] = alive[job.key]
        elif job.key in locked:
            plan.running_elsewhere.append(job.key)
        elif job.stage == "pretrain":
            pretrain.append(job)
        else:
            pending = [key for key in job.depends_on if key not in finished]
            if len(pending) > 1:
                raise ValueError(f"job {job.key} waits for several jobs ({pending}); one pretraining job expected")
            by_dependency.setdefault(pending[0] if pending else None, []).append(job)

    def arrays(name: str, stage: str, items: list[Job], after: str | None = None) -> None:
        packs = _chunks(items, pack)
        for number, chunk in enumerate(_chunks(packs, array_size)):
            suffix = f"-{number}" if len(packs) > array_size else ""
            plan.arrays.append(ArrayPlan(f"{name}{suffix}", stage, chunk, after, alive.get(after) if after else None))

    if pretrain:
        arrays(f"{sweep_name}-pretrain", "pretrain", pretrain)
    for after, items in by_dependency.items():
        if after is None:
            arrays(f"{sweep_name}-finetune", "finetune", items)
        else:
            arrays(f"{sweep_name}-finetune-{after}", "finetune", items, after)
    return plan


# --------------------------------------------------------------------------- submitting


@dataclass
class SubmitReport:
    submitted: list[Submission] = field(default_factory=list)
    plan: Plan = field(default_factory=Plan)
    aggregate: Submission | None = None
    not_submitted: dict[str, str] = field(default_factory=dict)  # key -> why
    messages: list[str] = field(default_factory=list)


def check_tracking(tracking_uri: str, profile: SlurmProfile, profile_name: str) -> None:
    """Jobs on other nodes can neither share a SQLite file safely nor reach the login node's 127.0.0.1."""
    if profile.single_node:
        return
    if local_database(tracking_uri) is not None:
        raise ConfigError(
            f"tracking: {tracking_uri} is a SQLite file, which jobs on other nodes cannot share safely "
            f"(profile {profile_name!r} is not single_node). Start the tracking server on the login node "
            f"(MLFLOW_HOST=<address the nodes reach> mlflow/serve.sh) and export "
            f"MLFLOW_TRACKING_URI=http://<that address>:5000 before submitting."
        )
    if re.match(r"^https?://(127\.|localhost|\[?::1)", tracking_uri):
        raise ConfigError(
            f"tracking: {tracking_uri} is this machine's loopback address, which compute nodes cannot reach "
            f"(profile {profile_name!r} is not single_node); serve MLflow on an address the nodes reach "
            f"(MLFLOW_HOST=... mlflow/serve.sh) and export MLFLOW_TRACKING_URI=http://<login node>:<port>."
        )


def _executor(
    folder: Path,
    profile: SlurmProfile,
    project_root: Path,
    name: str,
    after: str | None,
    after_kind: str = "afterok",
    aggregate: bool = False,
) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(
        folder=folder, max_num_timeout=profile.max_requeues_on_timeout, python=profile.python
    )
    setup = [*profile.setup, f"export PYTHONPATH={shlex.quote(str(project_root))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    extra = {**profile.sbatch_options(), "kill-on-invalid-dep": "yes"}
    if not aggregate:
        extra["requeue"] = True  # may be requeued (preemption in PreemptMode=REQUEUE, node failure)
    params: dict[str, Any] = dict(
        job_name=name,
        time=profile.aggregate.time_min if aggregate else profile.time_min,
        cpus_per_task=profile.aggregate.cpus if aggregate else profile.cpus_per_job,
        signal_delay_s=profile.signal_delay_s,
        array_parallelism=profile.array_parallelism,
        setup=setup,
        additional_parameters=extra,
        comment=f"ssl-hpc {name}",
    )
    partition = (profile.aggregate.partition or profile.partition) if aggregate else profile.partition
    mem = profile.aggregate.mem_gb if aggregate else profile.mem_gb
    for key, value in (
        ("partition", partition),
        ("account", profile.account),
        ("qos", profile.qos),
        ("constraint", None if aggregate else profile.constraint),
    ):
        if value is not None:
            params[key] = value
    if mem is not None:  # in MB: Slurm 22.05 refuses submitit's "3GB"
        extra["mem"] = f"{max(1, round(mem * 1024))}M"
    if profile.gpus_per_job and not aggregate:
        params["gpus_per_node"] = profile.gpus_per_job
    if after:
        params["dependency"] = f"{after_kind}:{after}"
    executor.update_parameters(**params)
    return executor


def _submit_array(executor, packs: list[list[Job]], context: RunContext, cpus: int) -> list[str]:
    submitted = []
    with executor.batch():
        for pack in packs:
            submitted.append(executor.submit(SlurmTask(), list(pack), context, cpus))
    return [job.job_id for job in submitted]


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
        records = load_records(context.output_root)
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
            executor = _executor(logs, profile, project_root, array.name, after)
            try:
                job_ids = _submit_array(executor, packs, context, profile.cpus_per_job)
            except Exception as error:  # sbatch refused (a site limit, a bad partition...): keep what went in
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
                            f"afterok:{after}" if after else "",
                            now,
                        )
                    )
            append_records(context.output_root, batch)
            report.submitted += batch
        if report.submitted:
            report.aggregate = _submit_aggregation(
                sweep, context, profile, project_root, records, queue, [*alive.values(), *new_ids.values()], report
            )
    return report


def aggregation_available(profile: SlurmProfile) -> bool:
    return profile.aggregate.enabled and importlib.util.find_spec("ssl_hpc.aggregate") is not None


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
    if importlib.util.find_spec("ssl_hpc.aggregate") is None:
        report.messages.append("no aggregation job: ssl_hpc.aggregate is not available")
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
    executor = _executor(
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


def slurm_available() -> bool:
    try:
        _command(["sinfo", "-h", "-o", "%P"], timeout=15)
    except SlurmError:
        return False
    return True


def main_submit(sweep: SweepConfig, jobs: list[Job], context: RunContext, project_root: Path) -> int:
    """``--backend slurm``: validate the profile, submit, print the job ids. 0 when everything is queued or done."""
    from ssl_hpc.launchers.profiles import sweep_profile

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
        f"follow with: python launch/sweep.py <sweep> --status"
    )
    return 1 if any(message.startswith("sbatch refused") for message in report.messages) else 0
