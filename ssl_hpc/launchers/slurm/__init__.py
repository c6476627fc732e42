"""The Slurm backend (submitit): arrays per stage, dependencies, requeue on preemption, idempotent re-runs.

``python launch/sweep.py SWEEP.yaml --backend slurm`` on a login node submits what is missing and
returns; the jobs run on the nodes, survive preemption by requeueing, and ``--status`` reads their state
back from MLflow and Slurm. The pieces, each in its own module:

- :mod:`~ssl_hpc.launchers.slurm.submit`: the login-node side, from the sweep to queued arrays.
- :mod:`~ssl_hpc.launchers.slurm.plan`: what to submit, in which arrays (pure).
- :mod:`~ssl_hpc.launchers.slurm.sbatch`: a cluster profile turned into one sbatch call.
- :mod:`~ssl_hpc.launchers.slurm.records`: ``submissions.jsonl``, which job runs which key.
- :mod:`~ssl_hpc.launchers.slurm.queries`: ``squeue`` / ``sacct`` / ``scontrol``, one call each, parsed.
- :mod:`~ssl_hpc.launchers.slurm.status`: ``--status`` rows from MLflow and Slurm together.
- :mod:`~ssl_hpc.launchers.slurm.node`: what runs on the compute node (:class:`SlurmTask`).

The names below are re-exported so that ``from ssl_hpc.launchers.slurm import X`` works as it did when
the backend was one module; :class:`SlurmTask` and :func:`run_aggregation` also for jobs that submitit
pickled under those paths before the split.
"""

from ssl_hpc.launchers.slurm.node import SlurmTask, run_aggregation, slurm_tags
from ssl_hpc.launchers.slurm.plan import ArrayPlan, Plan, plan_submission
from ssl_hpc.launchers.slurm.queries import (
    ALIVE,
    RUNNING_STATES,
    AccountingEntry,
    QueueEntry,
    SlurmError,
    base_ids,
    expand_job_id,
    max_array_size,
    parse_sacct,
    sacct,
    scontrol_config,
    squeue,
)
from ssl_hpc.launchers.slurm.records import (
    AGGREGATE_KEY,
    LOGS,
    RECORDS,
    SLURM_DIR,
    Submission,
    append_records,
    load_records,
    records_path,
    slurm_dir,
    submission_lock,
)
from ssl_hpc.launchers.slurm.status import REASONS, failure_reason, slurm_statuses
from ssl_hpc.launchers.slurm.submit import (
    SubmitReport,
    aggregation_available,
    check_tracking,
    format_report,
    resolved_sweep_file,
    submit_sweep,
)

__all__ = [
    "AGGREGATE_KEY",
    "ALIVE",
    "LOGS",
    "REASONS",
    "RECORDS",
    "RUNNING_STATES",
    "SLURM_DIR",
    "AccountingEntry",
    "ArrayPlan",
    "Plan",
    "QueueEntry",
    "SlurmError",
    "SlurmTask",
    "SubmitReport",
    "Submission",
    "aggregation_available",
    "append_records",
    "base_ids",
    "check_tracking",
    "expand_job_id",
    "failure_reason",
    "format_report",
    "load_records",
    "max_array_size",
    "parse_sacct",
    "plan_submission",
    "records_path",
    "resolved_sweep_file",
    "run_aggregation",
    "sacct",
    "scontrol_config",
    "slurm_dir",
    "slurm_statuses",
    "slurm_tags",
    "squeue",
    "submission_lock",
    "submit_sweep",
]
