"""Asking Slurm, batched: one ``squeue``, one ``sacct`` or one ``scontrol`` call however many jobs.

The only place that runs Slurm's read-only commands and parses their output, so that the planner and
``--status`` work on plain records (:class:`QueueEntry`, :class:`AccountingEntry`) and a login node
with hundreds of jobs in the queue is asked once, not once per job. A command that is missing, does
not answer or fails raises :class:`SlurmError` with the reason.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ssl_hpc.config import SlurmProfile

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


def queued_comments(user: str) -> dict[str, str]:
    """ONE ``squeue`` call: job (array task) id -> its comment, for all of ``user``'s queued jobs."""
    comments: dict[str, str] = {}
    for line in _command(["squeue", "-h", "-r", "-u", user, "-o", "%i|%k"]).splitlines():
        job_id, _, comment = line.strip().partition("|")
        for task in expand_job_id(job_id):
            comments[task] = comment
    return comments


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
