"""What was submitted: ``<output_root>/slurm/submissions.jsonl``, the sweep's memory of its Slurm jobs.

Slurm forgets a job soon after it ends (``MinJobAge``) and knows nothing of sweep keys; this file maps
every key to the job (array task) that runs it, so that a re-run of the sweep command asks Slurm about
exactly those jobs and submits only what is neither finished nor queued, and ``--status`` can say which
job ran what. It is append-only (a key's last line wins) and fsynced after each batch; a lock keeps two
sweep commands on the same sweep from submitting the same keys twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ssl_hpc.files import exclusive_lock

log = logging.getLogger(__name__)

SLURM_DIR = "slurm"
RECORDS = "submissions.jsonl"
LOGS = "logs"
AGGREGATE_KEY = "aggregate"


def slurm_dir(output_root: Path) -> Path:
    return Path(output_root) / SLURM_DIR


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
