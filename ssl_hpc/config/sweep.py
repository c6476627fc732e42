"""The sweep: a grid of runs and everything that applies to all of them, and the resolved config of
one run (hashed into its key).

Names that live in registries (methods, backbones, class-weight rules, fusion rules) are checked where
the registries are, when the grid is expanded into jobs (:func:`ssl_hpc.jobs.check_registered_names`):
this module validates shapes, types, ranges and the sweep's own cross-references.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, ValidationInfo, field_validator, model_validator

from ssl_hpc.config.base import FieldError, Strict, Text, validate_partial
from ssl_hpc.config.cam import CamSettings
from ssl_hpc.config.cluster import RaySettings, SlurmSettings, TuneSettings
from ssl_hpc.config.datasets import (
    BUILTIN_DATASETS,
    DATASET_NAME,
    MEDMNIST_2D,
    RESERVED_NAMES,
    SINGLE_LABEL,
    TORCHVISION_SIZES,
    ImageFolderSpec,
)
from ssl_hpc.config.guidance import guided_sections, masks_refusal
from ssl_hpc.config.stages import DataSettings, FinetuneSettings, ModelSettings, PretrainSettings, RuntimeSettings

FINETUNE_MODES = ("frozen", "end_to_end", "partial", "knn")
BACKENDS = ("local", "slurm", "ray")
FUSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class Grid(Strict):
    """Axes expanded as a product (with the seeds) into jobs."""

    dataset: list[str]
    size: list[Literal[28, 64, 128, 224]] = [28]
    method: list[str] = []
    backbone: list[str] = ["resnet18"]
    label_fraction: list[StrictFloat] = [1.0]
    labels_per_class: list[StrictInt | None] = [None]
    class_weight: list[str] = ["none"]
    finetune: list[Literal["frozen", "end_to_end", "partial", "knn"]] = ["end_to_end"]

    @field_validator("label_fraction")
    @classmethod
    def _fraction_in_range(cls, values: list[float]) -> list[float]:
        for value in values:
            if not 0.0 < value <= 1.0:
                raise ValueError(f"label fraction {value} is outside (0, 1]; accepted: numbers in (0, 1]")
        return values

    @field_validator("labels_per_class")
    @classmethod
    def _positive_budget(cls, values: list[int | None]) -> list[int | None]:
        for value in values:
            if value is not None and value < 1:
                raise ValueError(f"labels_per_class {value} must be a positive integer or null")
        return values

    @field_validator(
        "dataset", "size", "method", "backbone", "label_fraction", "labels_per_class", "class_weight", "finetune"
    )
    @classmethod
    def _not_empty(cls, values: list, info: ValidationInfo) -> list:
        if not values and info.field_name != "method":  # methods may all come as variants
            raise ValueError("an axis needs at least one value")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"repeated values in {values}")
        return values


class MethodOverrides(Strict):
    """Per-method settings that win over the sweep-wide sections.

    ``backbone`` replaces the grid's backbone axis for this method (MAE and AIM need ViTs while
    the grid's ResNets serve the others).
    """

    backbone: list[str] | None = None
    pretrain: dict[str, Any] = {}
    finetune: dict[str, Any] = {}
    model: dict[str, Any] = {}

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, values: list[str] | None) -> list[str] | None:
        if values is not None and not values:
            raise ValueError("give at least one backbone, or leave the field out")
        return values

    @field_validator("pretrain")
    @classmethod
    def _valid_pretrain(cls, values: dict[str, Any]) -> dict[str, Any]:
        return validate_partial(PretrainSettings, values)

    @field_validator("finetune")
    @classmethod
    def _valid_finetune(cls, values: dict[str, Any]) -> dict[str, Any]:
        return validate_partial(FinetuneSettings, values)

    @field_validator("model")
    @classmethod
    def _valid_model(cls, values: dict[str, Any]) -> dict[str, Any]:
        return validate_partial(ModelSettings, values)


class Variant(MethodOverrides):
    """A named variant of a method: the thesis's ResNet-34 MoCo v2, or MoCo "Plus" with extra
    unlabelled images. It runs over the grid's other axes like any method, and tables and fusions
    know it by its name."""

    method: str


class AggregateSettings(Strict):
    """The aggregation step (``launch/aggregate.py``): fusion ensembles, tables, statistics.

    ``fusions``: name -> member model names (the runs' ``model`` tag); every fusion is built with
    every rule in ``rules``, per dataset, size, label budget, class weight, fine-tune mode and seed.
    """

    fusions: dict[str, list[str]] = {}
    rules: list[str] = ["product"]
    reference: str = "supervised"  # the method (``method`` tag) of the reference model
    bootstrap_resamples: StrictInt = Field(1000, ge=1)
    confidence: StrictFloat = Field(0.95, gt=0, lt=1)
    stats_seed: StrictInt = 0
    greedy_metric: Literal["accuracy", "mean_class_accuracy"] = "accuracy"
    greedy_rounds: StrictInt = Field(10, ge=1)
    stacking_c: StrictFloat = Field(1.0, gt=0)
    plots: StrictBool = True

    @field_validator("rules")
    @classmethod
    def _distinct_rules(cls, values: list[str]) -> list[str]:
        if not values or len(set(values)) != len(values):
            raise ValueError("rules must be a non-empty list of distinct fusion rules")
        return values

    @field_validator("fusions")
    @classmethod
    def _valid_fusions(cls, values: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in values.items():
            _check_fusion(name, members)
        return values


def _check_fusion(name: str, members: list[str]) -> None:
    """One fusion's name and members. Members are model names (a method, or a variant's name)."""
    field = f"aggregate.fusions.{name}"
    if not FUSION_NAME.fullmatch(name):
        raise FieldError(field, f"fusion name {name!r} must match {FUSION_NAME.pattern}")
    if len(members) < 2:
        raise FieldError(field, f"a fusion needs at least 2 member models, got {members}")
    if len(set(members)) != len(members):
        raise FieldError(field, f"repeated members in {members}")
    for member in members:
        if not member.strip() or member != member.strip():
            raise FieldError(
                field,
                f"member {member!r} must be a model name: a method or a variant's name",
            )


class SweepConfig(Strict):
    """One YAML grid. ``name`` is the MLflow experiment."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backend: Literal["local", "slurm", "ray"] = "local"
    data_root: Text | None = None
    output_dir: Text = "outputs"  # run folders (checkpoints while a run is unfinished), per sweep
    results_dir: Text = "results"  # the aggregation's tables and figures, per sweep
    seeds: list[StrictInt] = [621]
    grid: Grid
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    cam: CamSettings = CamSettings()  # CAM figures and scores after each fine-tune run
    methods: dict[str, MethodOverrides] = {}
    datasets: dict[str, ImageFolderSpec] = {}  # image-folder datasets, usable by name in grid.dataset
    variants: dict[str, Variant] = {}
    aggregate: AggregateSettings = AggregateSettings()
    slurm: SlurmSettings = SlurmSettings()  # --backend slurm: a cluster profile and overrides of its fields
    ray: RaySettings = RaySettings()  # --backend ray and launch/tune.py
    tune: TuneSettings | None = None  # launch/tune.py: search space, metric, ASHA

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if not values or len(set(values)) != len(values):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return values

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, values: dict[str, Variant]) -> dict[str, Variant]:
        for name in values:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-' only")
        return values

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, values: dict[str, ImageFolderSpec]) -> dict[str, ImageFolderSpec]:
        for name in values:
            if name in RESERVED_NAMES:
                kind = "a MedMNIST" if name in MEDMNIST_2D else "a built-in (torchvision)"
                raise FieldError(
                    f"datasets.{name}",
                    f"{name!r} is {kind} dataset's name; give the image folder its own name (e.g. {name}_png)",
                )
            if not DATASET_NAME.fullmatch(name):
                raise FieldError(f"datasets.{name}", f"dataset name {name!r} must match {DATASET_NAME.pattern}")
        return values

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepConfig:
        if not self.grid.method and not self.variants:
            raise FieldError("grid.method", "no method to run: give grid.method, or declare variants:")
        models = {*self.grid.method, *self.variants}
        for fusion, members in self.aggregate.fusions.items():
            unknown = [member for member in members if member not in models]
            if unknown:
                raise FieldError(
                    f"aggregate.fusions.{fusion}",
                    f"{', '.join(map(repr, unknown))} is not a model of this sweep; accepted: "
                    f"{', '.join(sorted(models))}",
                )
        known = set(BUILTIN_DATASETS) | set(self.datasets)
        for entry, overrides in [*self.methods.items(), *self.variants.items()]:
            section = "variants" if entry in self.variants else "methods"
            for index, name in enumerate(overrides.pretrain.get("extra_unlabeled", ())):
                if name not in known:
                    raise FieldError(
                        f"{section}.{entry}.pretrain.extra_unlabeled[{index}]",
                        f"unknown dataset {name!r}; accepted: {', '.join(sorted(known))}",
                    )
        for index, name in enumerate(self.pretrain.extra_unlabeled):
            if name not in known:
                raise FieldError(
                    f"pretrain.extra_unlabeled[{index}]",
                    f"unknown dataset {name!r}; accepted: {', '.join(sorted(known))}",
                )
            if name in self.grid.dataset:
                raise FieldError(
                    f"pretrain.extra_unlabeled[{index}]",
                    f"{name!r} is a dataset of the grid: its train split is pretrained on already",
                )
        accepted = ", ".join(sorted(BUILTIN_DATASETS))
        if self.datasets:
            accepted += f"; or a dataset declared under datasets: {', '.join(sorted(self.datasets))}"
        for index, name in enumerate(self.grid.dataset):
            if name in self.datasets:
                continue
            if name in TORCHVISION_SIZES:
                size = TORCHVISION_SIZES[name]
                if self.grid.size != [size]:
                    raise FieldError(
                        "grid.size",
                        f"{name!r} comes in {size} px only, got {self.grid.size}; keep size: [{size}] "
                        "(model.input_size resizes the images for the network)",
                    )
                continue
            if name not in MEDMNIST_2D:
                raise FieldError(
                    f"grid.dataset[{index}]",
                    f"unknown dataset {name!r}; accepted: {accepted} (declare an image folder under datasets:)",
                )
            if name not in SINGLE_LABEL:
                raise FieldError(
                    f"grid.dataset[{index}]",
                    f"{name!r} is a multi-label dataset, which the single-label training loop does not "
                    f"support; accepted: {accepted}",
                )
        self._check_guidance_masks()
        if any(k is not None for k in self.grid.labels_per_class) and self.grid.label_fraction != [1.0]:
            raise FieldError(
                "grid.labels_per_class",
                "labels_per_class and label_fraction < 1 cannot be combined; keep label_fraction: [1.0]",
            )
        return self

    def _check_guidance_masks(self) -> None:
        """CAM guidance needs a mask per training image: refused here for a dataset that has none."""
        overrides = {f"methods.{name}": entry.finetune for name, entry in self.methods.items()}
        overrides.update({f"variants.{name}": entry.finetune for name, entry in self.variants.items()})
        sections = guided_sections(self.finetune, overrides)
        for index, name in enumerate(self.grid.dataset):
            spec = self.datasets.get(name)
            for section in sections:
                why = masks_refusal(section, name, spec.has_masks if spec is not None else None)
                if why:
                    raise FieldError(section, f"{why} (grid.dataset[{index}])")


class RunConfig(Strict):
    """Everything that determines one run's result. Hashed into the run key."""

    stage: Literal["pretrain", "finetune"]
    method: str
    dataset: str
    dataset_spec: ImageFolderSpec | None = None  # for an image-folder dataset: where and how it is read
    size: StrictInt
    backbone: str
    seed: StrictInt
    model: ModelSettings
    data: DataSettings
    pretrain_settings: PretrainSettings | None = None
    finetune_settings: FinetuneSettings | None = None
    finetune: str | None = None
    label_fraction: StrictFloat | None = None
    labels_per_class: StrictInt | None = None
    class_weight: str | None = None
    pretrain_key: str | None = None

    @property
    def label_budget(self) -> str:
        """How many labels the run used, as tables and tags show it: ``0.25`` or ``10_per_class``."""
        if self.stage == "pretrain":
            return "none"
        if self.labels_per_class is not None:
            return f"{self.labels_per_class}_per_class"
        return str(self.label_fraction)
