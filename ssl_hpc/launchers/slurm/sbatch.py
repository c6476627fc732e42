"""One sbatch call: a cluster profile turned into a submitit executor, and an array submitted with it.

Everything the profile says about resources (time, CPUs, memory, GPUs, partition, account, QoS), the
dependency on an earlier job, requeue on preemption and the node's environment (the profile's setup
lines, the project on ``PYTHONPATH``) becomes sbatch parameters here, in one place.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import submitit

from ssl_hpc.config import SlurmProfile
from ssl_hpc.jobs import Job
from ssl_hpc.launchers.slurm.node import SlurmTask
from ssl_hpc.train.handle import RunContext


def executor_for(
    folder: Path,
    profile: SlurmProfile,
    project_root: Path,
    name: str,
    after: str | None,
    after_kind: str = "afterok",
    aggregate: bool = False,
    submission_id: str = "",
) -> submitit.SlurmExecutor:
    """The executor for one array (or the aggregation job, ``aggregate=True``) named ``name``, logging to
    ``folder``, held until ``<after_kind>:<after>`` when ``after`` is given. ``submission_id`` ends the
    jobs' comment, where a later sweep command finds them if this one dies before recording them."""
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
        comment=f"ssl-hpc {name} {submission_id}".strip(),
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


def submit_array(executor, packs: list[list[Job]], context: RunContext, cpus: int) -> list[str]:
    """One sbatch call: a :class:`SlurmTask` per pack, as one array; returns the tasks' job ids, in order."""
    submitted = []
    with executor.batch():
        for pack in packs:
            submitted.append(executor.submit(SlurmTask(), list(pack), context, cpus))
    return [job.job_id for job in submitted]
