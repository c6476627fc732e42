"""Typed settings of the cluster backends: Slurm profiles, a sweep's ``slurm:``, ``ray:`` and ``tune:`` sections.

They are validated with the sweep, before anything is submitted.

A cluster profile (``slurm/profiles/<name>.yaml``) says what one job asks of the cluster; a sweep picks
one with ``slurm.profile`` and may override any of its fields next to it::

    slurm:
      profile: vulkan
      pack: 4            # any profile field: this sweep's value wins
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ssl_hpc.config.base import Strict, Text

PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SBATCH_LINE = re.compile(r"^(?:#SBATCH\s+)?--(?P<key>[a-z][a-z0-9-]*)(?:[= ](?P<value>.+))?$")
# Options the backend sets itself (arrays, dependencies, logs): a profile may not override them.
MANAGED_SBATCH = {
    "array",
    "dependency",
    "output",
    "error",
    "job-name",
    "open-mode",
    "signal",
    "wrap",
    "parsable",
    "kill-on-invalid-dep",
    "requeue",
    "no-requeue",
}


# Slurm names (partitions, accounts, QoS, constraint expressions): they end up on #SBATCH lines of a
# bash script, so a newline or a quote would run the rest of the value as a command.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.,:@%+=/&|!()*\[\]-]+$")
SLURM_NAME_CHARACTERS = "letters, digits and _ . , : @ % + = / & | ! ( ) * [ ] -"


def _slurm_name(value: str | None) -> str | None:
    if value is not None and not SLURM_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a Slurm name; accepted characters: {SLURM_NAME_CHARACTERS}")
    return value


# Profile fields a sweep may not override (see SlurmProfile.setup).
PROFILE_ONLY = ("python", "setup")


class AggregateResources(Strict):
    """The final aggregation job (``launch/aggregate.py`` after every run, ``afterany``) and what it asks for
    (it reads MLflow and writes tables: no GPU). ``enabled: false`` submits none."""

    enabled: StrictBool = True
    partition: str | None = None
    cpus: StrictInt = Field(1, ge=1)
    mem_gb: StrictFloat | None = Field(None, gt=0)
    time_min: StrictInt = Field(60, gt=0)

    @field_validator("partition")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return _slurm_name(value)


class SlurmProfile(Strict):
    """One cluster: where jobs go and what each asks for. Every field has a default; unknown fields are refused."""

    description: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_job: StrictInt = Field(0, ge=0)
    cpus_per_job: StrictInt = Field(1, ge=1)
    mem_gb: StrictFloat | None = Field(None, gt=0)
    time_min: StrictInt = Field(60, gt=0, description="time limit of one job, in minutes")
    # USR2 is sent this long before the time limit: the job requeues itself and resumes from its last
    # epoch checkpoint. Keep it above one epoch plus the requeue (a minute).
    signal_delay_s: StrictInt = Field(120, ge=0)
    max_requeues_on_timeout: StrictInt = Field(3, ge=0)
    array_parallelism: StrictInt = Field(32, ge=1)
    max_array_size: StrictInt | None = Field(None, ge=1, description="default: MaxArraySize of scontrol show config")
    max_submit_jobs: StrictInt | None = Field(None, ge=1, description="jobs this user may have queued (MaxSubmitJobs)")
    pack: StrictInt = Field(1, ge=1, description="runs sharing one allocation (and its GPU)")
    extra_sbatch: list[Text] = []
    # Lines of shell run before the job, and the interpreter on the nodes: trusted input, so only a cluster
    # profile (a file the user keeps for the cluster) may set them, never a sweep file or --set.
    setup: list[Text] = []
    python: Text | None = None
    # Every job runs on this machine (slurm/local): a SQLite store or a 127.0.0.1 tracking server is then
    # reachable and safe. Otherwise jobs must log to a tracking server the nodes can reach.
    single_node: StrictBool = False
    aggregate: AggregateResources = AggregateResources()

    @model_validator(mode="after")
    def _signal_before_the_limit(self) -> SlurmProfile:
        if self.signal_delay_s >= self.time_min * 60:
            raise ValueError(
                f"signal_delay_s ({self.signal_delay_s} s) must be shorter than time_min "
                f"({self.time_min} min = {self.time_min * 60} s): the job would be told to requeue "
                "as it starts"
            )
        return self

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return _slurm_name(value)

    @field_validator("python")
    @classmethod
    def _interpreter(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 32 for c in value)):
            raise ValueError(
                f"{value!r} is not an interpreter path; give a path or command name without control characters"
            )
        return value

    @field_validator("extra_sbatch")
    @classmethod
    def _sbatch_lines(cls, values: list[str]) -> list[str]:
        for value in values:
            match = _SBATCH_LINE.match(value.strip())
            if match is None:
                raise ValueError(
                    f"{value!r} is not an sbatch option; write it as '--name=value' or '#SBATCH --name=value'"
                )
            if match["key"] in MANAGED_SBATCH:
                raise ValueError(f"--{match['key']} is set by the backend itself; accepted: any other sbatch option")
        return values

    def sbatch_options(self) -> dict[str, Any]:
        """``extra_sbatch`` as submitit's ``additional_parameters`` (``{"reservation": "x", "exclusive": True}``)."""
        options: dict[str, Any] = {}
        for value in self.extra_sbatch:
            match = _SBATCH_LINE.match(value.strip())
            assert match is not None
            options[match["key"]] = match["value"].strip() if match["value"] else True
        return options


class SlurmSettings(BaseModel):
    """A sweep's ``slurm:`` section: the profile's name (or a path to a profile YAML) and overrides of its fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    profile: str | None = None

    @model_validator(mode="after")
    def _known_overrides(self) -> SlurmSettings:
        extra = dict(self.model_extra or {})
        for trusted in PROFILE_ONLY:
            if trusted in extra:
                raise ValueError(
                    f"slurm.{trusted} can only be set in a cluster profile (slurm/profiles/<name>.yaml), not in a "
                    "sweep file or with --set: it is run as a command on the compute nodes"
                )
        unknown = sorted(set(extra) - set(SlurmProfile.model_fields))
        if unknown:
            raise ValueError(
                f"unknown field slurm.{unknown[0]}; accepted: profile, {', '.join(SlurmProfile.model_fields)}"
            )
        try:
            SlurmProfile(**extra)
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"slurm.{field}: {first['msg']}") from None
        return self

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RaySettings(Strict):
    """``--backend ray``: where the Ray cluster is and what each run asks of it.

    ``address: null`` starts a private local instance (bound to 127.0.0.1) and stops it afterwards;
    ``auto`` joins the instance this machine belongs to (e.g. one started inside a Slurm allocation);
    ``ray://host:10001`` a remote one.
    """

    address: str | None = None
    num_cpus: StrictInt | None = Field(None, ge=1, description="CPUs of a local instance (default: all)")
    num_gpus: StrictInt | None = Field(None, ge=0, description="GPUs of a local instance (default: all visible)")
    cpus_per_job: StrictFloat = Field(1.0, gt=0)
    gpus_per_job: StrictFloat = Field(0.0, ge=0, description="fractional: 0.25 puts four runs on one GPU")
    max_retries: StrictInt = Field(2, ge=0, description="re-runs of a task whose worker died (not of an exception)")


class Distribution(Strict):
    """One dimension of a Tune search space: exactly one of these."""

    loguniform: tuple[StrictFloat, StrictFloat] | None = None
    uniform: tuple[StrictFloat, StrictFloat] | None = None
    randint: tuple[StrictInt, StrictInt] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(type(self).model_fields)}; got {given or 'none'}")
        kind = given[0]
        value = getattr(self, kind)
        if kind == "choice":
            if not value:
                raise ValueError("choice needs at least one value")
        elif not value[0] < value[1]:
            raise ValueError(f"{kind}: the lower bound must be below the upper bound, got {list(value)}")
        elif kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform bounds must be positive, got {list(value)}")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


class AshaSettings(Strict):
    grace_period: StrictInt = Field(1, ge=1)
    max_t: StrictInt | None = Field(None, ge=1, description="default: the fine-tune epochs")
    reduction_factor: StrictFloat = Field(2.0, gt=1)


class SchedulerSettings(Strict):
    asha: AshaSettings | None = None


class TuneSettings(Strict):
    """``launch/tune.py``: a hyperparameter search over dotted sweep fields, one MLflow run per trial."""

    metric: Literal["val_acc", "val_loss", "val_balanced_acc", "val_auc", "train_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    num_samples: StrictInt = Field(4, ge=1)
    max_concurrent: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = None
    space: dict[str, Distribution]
    scheduler: SchedulerSettings = SchedulerSettings(asha=AshaSettings())

    @field_validator("space")
    @classmethod
    def _not_empty(cls, values: dict[str, Distribution]) -> dict[str, Distribution]:
        if not values:
            raise ValueError("the search space needs at least one dotted field, e.g. finetune.lr")
        return values
