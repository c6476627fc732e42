"""The typed configuration: a sweep YAML, its validation, and the resolved config of one run.

This package is the bottom layer: it imports nothing else of ssl_hpc and nothing heavy (no torch,
MLflow or Ray), so ``import ssl_hpc.config`` and validating a sweep take a fraction of a second and a
bad sweep is refused before anything is imported, submitted or logged. Every error names the field and
the accepted values. The conventions that depend on it (run keys, tags) are in ``docs/conventions.md``.
"""

from ssl_hpc.config.base import ConfigError, Strict, check_names, format_validation_error, validate_model
from ssl_hpc.config.cam import CamMethodName, CamSettings
from ssl_hpc.config.cluster import (
    AggregateResources,
    RaySettings,
    SlurmProfile,
    SlurmSettings,
    TuneSettings,
)
from ssl_hpc.config.datasets import (
    BUILTIN_DATASETS,
    DATASET_NAME,
    IMAGE_EXTENSIONS,
    MEDMNIST_2D,
    MEDMNIST_2D_TASKS,
    SINGLE_LABEL,
    TORCHVISION_SIZES,
    ImageFolderSpec,
    dataset_modality,
    default_data_root,
)
from ssl_hpc.config.guidance import GUIDANCE_LOSSES, GUIDANCE_MAPS, GuidanceSettings
from ssl_hpc.config.loading import apply_overrides, load_sweep, parse_override, read_yaml, validate_sweep
from ssl_hpc.config.stages import (
    DataSettings,
    FinetuneSettings,
    ModelSettings,
    PretrainSettings,
    RuntimeSettings,
    StageSettings,
)
from ssl_hpc.config.sweep import (
    BACKENDS,
    FINETUNE_MODES,
    FUSION_NAME,
    AggregateSettings,
    Grid,
    MethodOverrides,
    RunConfig,
    SweepConfig,
    Variant,
)

__all__ = [
    "BACKENDS",
    "BUILTIN_DATASETS",
    "DATASET_NAME",
    "FINETUNE_MODES",
    "FUSION_NAME",
    "GUIDANCE_LOSSES",
    "GUIDANCE_MAPS",
    "IMAGE_EXTENSIONS",
    "MEDMNIST_2D",
    "MEDMNIST_2D_TASKS",
    "SINGLE_LABEL",
    "TORCHVISION_SIZES",
    "AggregateResources",
    "AggregateSettings",
    "CamMethodName",
    "CamSettings",
    "ConfigError",
    "DataSettings",
    "FinetuneSettings",
    "Grid",
    "GuidanceSettings",
    "ImageFolderSpec",
    "MethodOverrides",
    "ModelSettings",
    "PretrainSettings",
    "RaySettings",
    "RunConfig",
    "RuntimeSettings",
    "SlurmProfile",
    "SlurmSettings",
    "StageSettings",
    "Strict",
    "SweepConfig",
    "TuneSettings",
    "Variant",
    "apply_overrides",
    "check_names",
    "dataset_modality",
    "default_data_root",
    "format_validation_error",
    "load_sweep",
    "parse_override",
    "read_yaml",
    "validate_model",
    "validate_sweep",
]
