"""Typed sweep configuration: YAML loading, CLI overrides and validation.

A sweep YAML describes a grid; everything a run depends on is resolved into one
:class:`RunConfig` per job (see :mod:`ssl_hpc.jobs`), whose hash is the run key.
Validation happens here, before anything is submitted or logged, and every error
names the offending field and what would have been accepted.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ssl_hpc.data.class_weights import CLASS_WEIGHT_RULES, is_known_rule
from ssl_hpc.data.duplicates import DEFAULT_MIN_CORRELATION, DEFAULT_THRESHOLD
from ssl_hpc.data.image_folder import ImageFolderSpec
from ssl_hpc.data.medmnist import MEDMNIST_2D, SINGLE_LABEL
from ssl_hpc.evaluate.fusion import FUSION_NAME, FUSION_RULES, GREEDY_METRICS
from ssl_hpc.explain.settings import CamSettings
from ssl_hpc.launchers.settings import RaySettings, SlurmSettings, TuneSettings
from ssl_hpc.models.backbones import BACKBONES
from ssl_hpc.models.methods import METHODS

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FINETUNE_MODES = ("frozen", "end_to_end", "partial", "knn")
BACKENDS = ("local", "slurm", "ray")


class ConfigError(ValueError):
    """A sweep (or profile) that cannot run; the message names the field and the accepted values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSettings(_Strict):
    """Optimisation settings shared by the pretraining and fine-tuning stages.

    The default schedule is the thesis's: lr halved every 20 epochs, never below 0.0005.
    """

    epochs: int = Field(100, ge=0)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "lars", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    step_epochs: int = Field(20, ge=1)
    step_gamma: float = Field(0.5, gt=0, le=1)
    min_lr: float = Field(0.0005, ge=0)
    warmup_epochs: int = Field(0, ge=0)


class PretrainSettings(StageSettings):
    """Pretext training. Views are augmented on whole batches on the training device."""

    crop_scale_min: float = Field(0.2, gt=0, le=1)
    color_jitter: float = Field(0.4, ge=0)
    gray_scale_prob: float = Field(0.2, ge=0, le=1)
    blur_prob: float = Field(0.0, ge=0, le=1)
    extra_unlabeled: tuple[str, ...] = ()
    mask_ratio: float = Field(0.75, gt=0, lt=1)  # MAE


class FinetuneSettings(StageSettings):
    """Supervised training with labels: the reference model and every fine-tuning mode."""

    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = Field(512, ge=1)
    trainable_last: int = Field(1, ge=1)  # partial: the last N stages...
    trainable_layers: int | None = Field(None, ge=1)  # ... or the last N layers with weights...
    trainable_from: str | None = None  # ... or every layer from this module on
    knn_k: int = Field(20, ge=1)
    augment: Literal["none", "flip", "crop_flip"] = "none"
    select_by: Literal["val_acc", "val_balanced_acc", "val_auc", "val_loss", "last"] = "val_acc"
    early_stopping_patience: int | None = Field(None, ge=1)
    effective_number_beta: float = Field(0.999, gt=0, lt=1)


class ModelSettings(_Strict):
    """Architecture choices that are not grid axes."""

    stem: Literal["imagenet", "small"] = "imagenet"
    input_size: int | None = Field(None, ge=8)
    vit_patch_size: int | None = Field(None, ge=1)
    vit_pool: Literal["token", "avg"] = "token"
    # Start the backbone from ImageNet weights ("imagenet": timm's, from the local cache) or from a
    # state-dict file (a path); None: random initialisation.
    pretrained_weights: str | None = None


class DataSettings(_Strict):
    """``duplicates``: the leakage guard run before training (see :mod:`ssl_hpc.data.duplicates`):
    near-duplicate images across train/val/test are counted and logged (``report``), stop the run
    (``error``), or are not looked for (``off``). A pair counts when its perceptual hashes differ in at
    most ``duplicate_threshold`` of 64 bits and its 16 x 16 thumbnails correlate at least
    ``duplicate_min_correlation``."""

    to_rgb: bool = False
    download: bool = True
    duplicates: Literal["report", "error", "off"] = "report"
    duplicate_threshold: int = Field(DEFAULT_THRESHOLD, ge=0, le=32)
    duplicate_min_correlation: float = Field(DEFAULT_MIN_CORRELATION, ge=-1, le=1)


class RuntimeSettings(_Strict):
    """How a run executes; never part of the run key (results should not depend on it)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = Field(512, ge=1)
    num_threads: int | None = Field(None, ge=1)
    keep_checkpoints: bool = False


class Grid(_Strict):
    """Axes expanded as a product (with the seeds) into jobs."""

    dataset: list[str]
    size: list[Literal[28, 64, 128, 224]] = [28]
    method: list[str] = []
    backbone: list[str] = ["resnet18"]
    label_fraction: list[float] = [1.0]
    labels_per_class: list[int | None] = [None]
    class_weight: list[str] = ["none"]
    finetune: list[Literal["frozen", "end_to_end", "partial", "knn"]] = ["end_to_end"]

    @field_validator("method")
    @classmethod
    def _known_method(cls, values: list[str]) -> list[str]:
        return _check_names(values, METHODS, "method")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, values: list[str]) -> list[str]:
        return _check_names(values, BACKBONES, "backbone")

    @field_validator("class_weight")
    @classmethod
    def _known_class_weight(cls, values: list[str]) -> list[str]:
        for value in values:
            if not is_known_rule(value):
                raise ValueError(
                    f"unknown class weight rule {value!r}; accepted: {', '.join(CLASS_WEIGHT_RULES)}, "
                    "or critical:<class>=<weight> (e.g. critical:COVID=3)"
                )
        return values

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


class MethodOverrides(_Strict):
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
        return values if values is None else _check_names(values, BACKBONES, "backbone")

    @field_validator("pretrain")
    @classmethod
    def _valid_pretrain(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _validate_partial(PretrainSettings, values)

    @field_validator("finetune")
    @classmethod
    def _valid_finetune(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _validate_partial(FinetuneSettings, values)

    @field_validator("model")
    @classmethod
    def _valid_model(cls, values: dict[str, Any]) -> dict[str, Any]:
        return _validate_partial(ModelSettings, values)


class Variant(MethodOverrides):
    """A named variant of a method: the thesis's ResNet-34 MoCo v2, or MoCo "Plus" with extra
    unlabelled images. It runs over the grid's other axes like any method, and tables and fusions
    know it by its name."""

    method: str

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        _check_names([value], METHODS, "method")
        return value


def _validate_partial(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Checks a partial section now, so a typo in an override fails before anything runs."""
    try:
        model(**values)
    except ValidationError as error:
        raise ValueError("; ".join(f"{field}: {message}" for field, message in _describe(error, model))) from None
    return values


class AggregateSettings(_Strict):
    """The aggregation step (``launch/aggregate.py``): fusion ensembles, tables, statistics.

    ``fusions``: name -> member model names (the runs' ``model`` tag); every fusion is built with
    every rule in ``rules``, per dataset, size, label budget, class weight, fine-tune mode and seed.
    """

    fusions: dict[str, list[str]] = {}
    rules: list[str] = ["product"]
    reference: str = "supervised"  # the method (``method`` tag) of the reference model
    bootstrap_resamples: int = Field(1000, ge=1)
    confidence: float = Field(0.95, gt=0, lt=1)
    stats_seed: int = 0
    greedy_metric: Literal[GREEDY_METRICS] = "accuracy"  # type: ignore[valid-type]
    greedy_rounds: int = Field(10, ge=1)
    stacking_c: float = Field(1.0, gt=0)
    plots: bool = True

    @field_validator("rules")
    @classmethod
    def _known_rules(cls, values: list[str]) -> list[str]:
        if not values or len(set(values)) != len(values):
            raise ValueError(f"rules must be a non-empty list of distinct rules; accepted: {', '.join(FUSION_RULES)}")
        return _check_names(values, FUSION_RULES, "fusion rule")

    @field_validator("reference")
    @classmethod
    def _known_reference(cls, value: str) -> str:
        _check_names([value], METHODS, "reference method")
        return value

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
        raise _field_error(field, f"fusion name {name!r} must match {FUSION_NAME.pattern}")
    if len(members) < 2:
        raise _field_error(field, f"a fusion needs at least 2 member models, got {members}")
    if len(set(members)) != len(members):
        raise _field_error(field, f"repeated members in {members}")
    for member in members:
        if not member.strip() or member != member.strip():
            raise _field_error(
                field,
                f"member {member!r} must be a model name: a method ({', '.join(sorted(METHODS))}) or a variant's name",
            )


class SweepConfig(_Strict):
    """One YAML grid. ``name`` is the MLflow experiment."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backend: Literal["local", "slurm", "ray"] = "local"
    data_root: str | None = None
    output_dir: str = "outputs"  # run folders (checkpoints while a run is unfinished), per sweep
    results_dir: str = "results"  # the aggregation's tables and figures, per sweep
    seeds: list[int] = [621]
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
            if name in METHODS:
                raise ValueError(f"variant name {name!r} is a method's name; give the variant its own name")
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-' only")
        return values

    @field_validator("datasets")
    @classmethod
    def _dataset_names(cls, values: dict[str, ImageFolderSpec]) -> dict[str, ImageFolderSpec]:
        for name in values:
            if name in MEDMNIST_2D:
                raise _field_error(
                    f"datasets.{name}", f"{name!r} is a MedMNIST dataset's name; give the image folder its own name"
                )
            if not DATASET_NAME.fullmatch(name):
                raise _field_error(f"datasets.{name}", f"dataset name {name!r} must match {DATASET_NAME.pattern}")
        return values

    @field_validator("methods")
    @classmethod
    def _override_known_methods(cls, values: dict[str, MethodOverrides]) -> dict[str, MethodOverrides]:
        _check_names(list(values), METHODS, "method")
        return values

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepConfig:
        if not self.grid.method and not self.variants:
            raise _field_error(
                "grid.method", f"no method to run; accepted: {', '.join(sorted(METHODS))} (or declare variants:)"
            )
        models = {*self.grid.method, *self.variants}
        for fusion, members in self.aggregate.fusions.items():
            unknown = [member for member in members if member not in models]
            if unknown:
                raise _field_error(
                    f"aggregate.fusions.{fusion}",
                    f"{', '.join(map(repr, unknown))} is not a model of this sweep; accepted: "
                    f"{', '.join(sorted(models))}",
                )
        known = set(SINGLE_LABEL) | set(self.datasets)
        for entry, overrides in [*self.methods.items(), *self.variants.items()]:
            section = "variants" if entry in self.variants else "methods"
            for index, name in enumerate(overrides.pretrain.get("extra_unlabeled", ())):
                if name not in known:
                    raise _field_error(
                        f"{section}.{entry}.pretrain.extra_unlabeled[{index}]",
                        f"unknown dataset {name!r}; accepted: {', '.join(sorted(known))}",
                    )
        for index, name in enumerate(self.pretrain.extra_unlabeled):
            if name not in known:
                raise _field_error(
                    f"pretrain.extra_unlabeled[{index}]",
                    f"unknown dataset {name!r}; accepted: {', '.join(sorted(known))}",
                )
            if name in self.grid.dataset:
                raise _field_error(
                    f"pretrain.extra_unlabeled[{index}]",
                    f"{name!r} is a dataset of the grid: its train split is pretrained on already",
                )
        accepted = ", ".join(sorted(SINGLE_LABEL))
        if self.datasets:
            accepted += f"; or a dataset declared under datasets: {', '.join(sorted(self.datasets))}"
        for index, name in enumerate(self.grid.dataset):
            if name in self.datasets:
                continue
            if name not in MEDMNIST_2D:
                raise _field_error(
                    f"grid.dataset[{index}]",
                    f"unknown dataset {name!r}; accepted: {accepted} (declare an image folder under datasets:)",
                )
            if name not in SINGLE_LABEL:
                raise _field_error(
                    f"grid.dataset[{index}]",
                    f"{name!r} is a multi-label dataset, which the single-label training loop does not "
                    f"support; accepted: {accepted}",
                )
        if any(k is not None for k in self.grid.labels_per_class) and self.grid.label_fraction != [1.0]:
            raise _field_error(
                "grid.labels_per_class",
                "labels_per_class and label_fraction < 1 cannot be combined; keep label_fraction: [1.0]",
            )
        return self


class RunConfig(_Strict):
    """Everything that determines one run's result. Hashed into the run key."""

    stage: Literal["pretrain", "finetune"]
    method: str
    dataset: str
    dataset_spec: ImageFolderSpec | None = None  # for an image-folder dataset: where and how it is read
    size: int
    backbone: str
    seed: int
    model: ModelSettings
    data: DataSettings
    pretrain_settings: PretrainSettings | None = None
    finetune_settings: FinetuneSettings | None = None
    finetune: str | None = None
    label_fraction: float | None = None
    labels_per_class: int | None = None
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


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _field_error(field: str, message: str) -> _FieldError:
    return _FieldError(field, message)


def _check_names(
    values: list[str], registry: typing.Mapping[str, Any] | typing.Collection[str], what: str
) -> list[str]:
    for value in values:
        if value not in registry:
            raise ValueError(f"unknown {what} {value!r}; accepted: {', '.join(sorted(registry))}")
    return values


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (['a', 'b', 'c'], value), the value parsed as YAML (``[1, 2]``, ``0.5``...)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    dotted, raw = text.split("=", 1)
    keys = [k for k in dotted.strip().split(".")]
    if not all(keys):
        raise ConfigError(f"--set {text!r}: empty key in {dotted!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({error})") from None
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Returns a copy of ``raw`` with each ``dotted.key=value`` set, creating sections as needed."""
    import copy

    result = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return result


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such sweep file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep must be a YAML mapping (name:, grid:, ...), got {type(raw).__name__}")
    return raw


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Reads, overrides and validates a sweep; raises :class:`ConfigError` naming the field."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate_sweep(raw, source=str(path))


def validate_sweep(raw: dict[str, Any], source: str = "sweep") -> SweepConfig:
    return validate_model(SweepConfig, raw, source)


def validate_model(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, model, source)) from None


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    return "\n".join(f"{source}: {field or '(top level)'}: {message}" for field, message in _describe(error, model))


def _describe(error: ValidationError, model: type[BaseModel]) -> list[tuple[str, str]]:
    """(dotted field, message naming what is accepted) for each error."""
    described = []
    for item in error.errors():
        field = _dotted(item["loc"])
        message = item["msg"]
        inner = (item.get("ctx") or {}).get("error")
        if isinstance(inner, _FieldError):
            field, message = inner.field, str(inner)
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            accepted = _accepted_fields(model, item["loc"][:-1])
            message = f"unknown field; accepted: {', '.join(accepted)}" if accepted else "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        described.append((field, message))
    return described


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).startswith(("function-", "literal[")):
            continue
        else:
            text += ("." if text else "") + str(part)
    return text


def _accepted_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Walks ``loc`` through nested models to list the fields the innermost one accepts."""
    annotation: Any = model
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif typing.get_origin(annotation) in (list, tuple):
            annotation = typing.get_args(annotation)[0]
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (Union, __import__("types").UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def merged_settings(cls: type[StageSettings] | type[ModelSettings], *layers: dict[str, Any]) -> Any:
    """Builds ``cls`` from layers of explicitly set values, later layers winning."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    return cls(**values)
