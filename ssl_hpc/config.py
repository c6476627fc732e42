"""Typed sweep configuration: YAML loading, CLI overrides and validation.

A sweep YAML describes a grid; everything a run depends on is resolved into one
:class:`RunConfig` per job (see :mod:`ssl_hpc.jobs`), whose hash is the run key.
Validation happens here, before anything is submitted or logged, and every error
names the offending field and what would have been accepted.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssl_hpc.data.medmnist import MEDMNIST_2D, SINGLE_LABEL
from ssl_hpc.data.class_weights import CLASS_WEIGHT_RULES
from ssl_hpc.models.backbones import BACKBONES
from ssl_hpc.models.methods import METHODS

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
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
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


class FinetuneSettings(StageSettings):
    """Supervised training with labels: the reference model and every fine-tuning mode."""

    head: Literal["linear", "mlp"] = "linear"
    head_hidden: int = Field(512, ge=1)
    trainable_last: int = Field(1, ge=1)
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
    mask_ratio: float = Field(0.75, gt=0, lt=1)


class DataSettings(_Strict):
    to_rgb: bool = False
    download: bool = True


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
    method: list[str]
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
        return _check_names(values, CLASS_WEIGHT_RULES, "class weight rule")

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

    @field_validator("dataset", "size", "method", "backbone", "label_fraction", "labels_per_class",
                     "class_weight", "finetune")
    @classmethod
    def _not_empty(cls, values: list) -> list:
        if not values:
            raise ValueError("an axis needs at least one value")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"repeated values in {values}")
        return values


class MethodOverrides(_Strict):
    """Per-method settings that win over the sweep-wide sections."""

    pretrain: dict[str, Any] = {}
    finetune: dict[str, Any] = {}
    model: dict[str, Any] = {}

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


def _validate_partial(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """Checks a partial section now, so a typo in an override fails before anything runs."""
    try:
        model(**values)
    except ValidationError as error:
        raise ValueError("; ".join(f"{field}: {message}" for field, message in _describe(error, model))) from None
    return values


class SweepConfig(_Strict):
    """One YAML grid. ``name`` is the MLflow experiment."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    backend: Literal["local", "slurm", "ray"] = "local"
    data_root: str | None = None
    output_dir: str = "outputs"
    seeds: list[int] = [621]
    grid: Grid
    pretrain: PretrainSettings = PretrainSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    methods: dict[str, MethodOverrides] = {}

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, values: list[int]) -> list[int]:
        if not values or len(set(values)) != len(values):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return values

    @field_validator("methods")
    @classmethod
    def _override_known_methods(cls, values: dict[str, MethodOverrides]) -> dict[str, MethodOverrides]:
        _check_names(list(values), METHODS, "method")
        return values

    @model_validator(mode="after")
    def _cross_checks(self) -> SweepConfig:
        for index, name in enumerate(self.grid.dataset):
            if name not in MEDMNIST_2D:
                raise _field_error(
                    f"grid.dataset[{index}]",
                    f"unknown dataset {name!r}; accepted: {', '.join(sorted(SINGLE_LABEL))}",
                )
            if name not in SINGLE_LABEL:
                raise _field_error(
                    f"grid.dataset[{index}]",
                    f"{name!r} is a multi-label dataset, which the single-label training loop does not "
                    f"support; accepted: {', '.join(sorted(SINGLE_LABEL))}",
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


def _check_names(values: list[str], registry: typing.Mapping[str, Any] | typing.Collection[str], what: str) -> list[str]:
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
            message = message[len("Value error, "):]
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
    if typing.get_origin(annotation) in (Union, getattr(__import__("types"), "UnionType")):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def merged_settings(cls: type[StageSettings] | type[ModelSettings], *layers: dict[str, Any]) -> Any:
    """Builds ``cls`` from layers of explicitly set values, later layers winning."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update(layer)
    return cls(**values)
