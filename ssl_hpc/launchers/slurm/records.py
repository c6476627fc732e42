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
INTENTS = "intents.jsonl"
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
    submission_id: str = ""  # the Intent it came from (its id is in the Slurm job's comment)


@dataclass(frozen=True)
class Intent:
    """One sbatch call about to be made, written (fsynced) before it: if the sweep command dies between
    sbatch and writing the records, the next run finds those jobs in Slurm's queue by the id in their
    comment, instead of queueing their keys a second time. ``packs[i]`` runs as array task ``i``."""

    submission_id: str
    stage: str
    dependency: str
    packs: tuple[tuple[str, ...], ...]
    written_at: float


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
    _append_lines(records_path(output_root), [json.dumps(asdict(record)) for record in records])


def _append_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        for line in lines:
            file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def append_intent(output_root: Path, intent: Intent) -> None:
    _append_lines(slurm_dir(output_root) / INTENTS, [json.dumps(asdict(intent))])


def close_intents(output_root: Path, submission_ids: Iterable[str]) -> None:
    """These calls need no recovery any more: their jobs are recorded, never went in, or are gone."""
    _append_lines(slurm_dir(output_root) / INTENTS, [json.dumps({"closed": sid}) for sid in submission_ids])


def open_intents(output_root: Path, records: Iterable[Submission]) -> list[Intent]:
    """Intents neither closed nor behind any record: sbatch calls whose outcome this folder does not know."""
    path = slurm_dir(output_root) / INTENTS
    if not path.is_file():
        return []
    intents: dict[str, Intent] = {}
    closed = {record.submission_id for record in records if record.submission_id}
    for line in path.read_text().splitlines():
        try:
            raw = json.loads(line)
            if "closed" in raw:
                closed.add(raw["closed"])
                continue
            raw["packs"] = tuple(tuple(pack) for pack in raw["packs"])
            intent = Intent(**raw)
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a malformed line of %s: %r", path, line[:200])
            continue
        intents[intent.submission_id] = intent
    return [intent for sid, intent in intents.items() if sid not in closed]


@contextmanager
def submission_lock(output_root: Path):
    """Two sweep commands on the same sweep at once would both submit the missing keys: one waits."""
    path = slurm_dir(output_root) / "submit.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path):
        yield
