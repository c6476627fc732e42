"""What to submit, decided without asking anybody: a pure function of the jobs and what is known of them.

Given which keys are FINISHED (MLflow), alive in Slurm's queue (the records and ``squeue``) or running
elsewhere (their run lock), :func:`plan_submission` groups the rest into arrays: pretraining jobs in one,
fine-tune jobs in one array per pretraining job they wait for, each split to fit ``MaxArraySize`` and
packed ``pack`` jobs per task. Kept pure so that it is tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ssl_hpc.jobs import Job, order_jobs


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
