"""Grid expansion: a sweep becomes pretraining jobs and the fine-tuning jobs that depend on them.

Each job carries a fully resolved :class:`RunConfig`; its key is a short hash of that config, so
the same experiment always has the same key (re-running skips or resumes it) and any change that
could change a result gives a new key. Settings that cannot influence a run (the head of a k-NN
probe, the beta of a rule not in use...) are reset to their defaults before hashing, so changing
them does not retrain anything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass

from ssl_hpc.config import (
    ConfigError,
    FinetuneSettings,
    MethodOverrides,
    ModelSettings,
    PretrainSettings,
    RunConfig,
    StageSettings,
    SweepConfig,
    dataset_modality,
)
from ssl_hpc.data.class_weights import CLASS_WEIGHT_RULES, is_known_rule
from ssl_hpc.evaluate.fusion import FUSION_RULES
from ssl_hpc.models.backbones import BACKBONE_FAMILIES, BACKBONES
from ssl_hpc.models.methods import METHODS
from ssl_hpc.models.pretrained import IMAGENET, IMAGENET_WEIGHTS

KEY_LENGTH = 12


# Settings that guard or fetch the data but cannot change what a run computes.
NOT_IN_KEY = {"data": {"download", "duplicates", "duplicate_threshold", "duplicate_min_correlation"}}


# Fine-tuning defaults of a backbone family, under the method's and the sweep's own settings. ResNets keep
# the thesis's SGD step schedule (the FinetuneSettings defaults); ViTs fine-tune with AdamW, warm-up and
# cosine as in DeiT and the MAE paper's fine-tuning recipe (base lr 5e-4 per 256 images, here batch 128).
FAMILY_FINETUNE_DEFAULTS: dict[str, dict[str, object]] = {
    "vit": {
        "optimizer": "adamw",
        "lr": 2.5e-4,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "min_lr": 1e-6,
        "warmup_epochs": 5,
    },
}


# Settings added after keys were in use, left out of the hash while at their defaults (which compute what the
# code did before they existed), so that every run an existing sweep finished keeps its key.
KEY_ONLY_WHEN_SET = {"finetune_settings": {"guidance": None, "accumulate_steps": 1}}


def run_key(config: RunConfig) -> str:
    resolved = config.model_dump(mode="json", exclude=NOT_IN_KEY)
    for section, defaults in KEY_ONLY_WHEN_SET.items():
        values = resolved.get(section) or {}
        for name, default in defaults.items():
            if name in values and values[name] == default:
                del values[name]
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_LENGTH]


@dataclass(frozen=True)
class Job:
    key: str
    config: RunConfig
    depends_on: tuple[str, ...] = ()
    # The name tables and fusions use for the trained model: the method, or a variant's name.
    model_name: str = ""

    @property
    def stage(self) -> str:
        return self.config.stage

    def tags(self, sweep_name: str) -> dict[str, str]:
        """The MLflow tags every run carries (docs/conventions.md)."""
        config = self.config

        def text(value: object) -> str:
            return "none" if value is None else str(value)

        tags = {
            "sweep": sweep_name,
            "key": self.key,
            "stage": config.stage,
            "method": config.method,
            "model": self.model_name or config.method,
            "backbone": config.backbone,
            "dataset": config.dataset,
            "size": str(config.size),
            "label_fraction": config.label_budget,
            "class_weight": text(config.class_weight),
            "finetune": text(config.finetune),
            "seed": str(config.seed),
        }
        if config.pretrain_key:
            tags["pretrain_key"] = config.pretrain_key
        return tags

    def describe(self) -> str:
        config = self.config
        parts = [config.stage, config.method, config.backbone, f"{config.dataset}@{config.size}", f"seed={config.seed}"]
        if config.stage == "finetune":
            parts += [f"labels={config.label_budget}", f"cw={config.class_weight}", f"ft={config.finetune}"]
        return " ".join(parts)


def _layer(section: object) -> dict:
    """The values a sweep section set explicitly (defaults excluded), so method defaults can show."""
    return section.model_dump(exclude_unset=True)  # type: ignore[attr-defined]


def _relevant(settings: FinetuneSettings, mode: str, class_weight: str) -> FinetuneSettings:
    defaults = FinetuneSettings()
    reset: dict[str, object] = {}
    if class_weight != "effective_number":
        reset["effective_number_beta"] = defaults.effective_number_beta
    if mode != "partial":
        reset.update(trainable_last=defaults.trainable_last, trainable_layers=None, trainable_from=None)
    if settings.head == "linear":
        reset["head_hidden"] = defaults.head_hidden
    reset.update(_unused_optimizer_settings(settings))
    if mode == "knn":
        keep = {"knn_k"}
        reset.update({name: getattr(defaults, name) for name in FinetuneSettings.model_fields if name not in keep})
    else:
        reset["knn_k"] = defaults.knn_k
    return settings.model_copy(update=reset)


def _relevant_pretrain(settings: PretrainSettings, method: str, view_preset: str) -> PretrainSettings:
    """The pretraining settings that can change what ``method`` learns (the others back to defaults)."""
    defaults = PretrainSettings()
    reset: dict[str, object] = {}
    if method != "mae":
        reset["mask_ratio"] = defaults.mask_ratio
        reset["norm_pix_loss"] = defaults.norm_pix_loss
    if method != "aim":
        reset["aim_target"] = defaults.aim_target
    if view_preset != "contrastive":  # crop and flip only: no colour, grayscale, blur or modality
        reset.update(
            color_jitter=defaults.color_jitter,
            gray_scale_prob=defaults.gray_scale_prob,
            blur_prob=defaults.blur_prob,
            modality=defaults.modality,
        )
    reset.update(_unused_optimizer_settings(settings))
    return settings.model_copy(update=reset)


def _unused_optimizer_settings(settings: StageSettings) -> dict[str, object]:
    """Either stage: the momentum of SGD and LARS means nothing to Adam or AdamW."""
    return {} if settings.optimizer in ("sgd", "lars") else {"momentum": type(settings)().momentum}


@dataclass(frozen=True)
class _Entry:
    """One trained model of the sweep: a grid method or a named variant, with its overrides."""

    name: str
    method: str
    backbones: tuple[str, ...]
    overrides: MethodOverrides | None
    field: str  # where its backbones come from, for error messages


def _entries(sweep: SweepConfig) -> list[_Entry]:
    entries = []
    for method in sweep.grid.method:
        overrides = sweep.methods.get(method)
        from_override = overrides is not None and overrides.backbone is not None
        backbones = tuple(overrides.backbone) if from_override else tuple(sweep.grid.backbone)
        entries.append(
            _Entry(
                method, method, backbones, overrides, f"methods.{method}.backbone" if from_override else "grid.backbone"
            )
        )
    for name, variant in sweep.variants.items():
        backbones = tuple(variant.backbone) if variant.backbone is not None else tuple(sweep.grid.backbone)
        entries.append(
            _Entry(
                name,
                variant.method,
                backbones,
                variant,
                f"variants.{name}.backbone" if variant.backbone is not None else "grid.backbone",
            )
        )
    for entry in entries:
        families = METHODS[entry.method].backbone_families
        wrong = [b for b in entry.backbones if families is not None and BACKBONE_FAMILIES[b] not in families]
        if wrong:
            accepted = sorted(b for b, family in BACKBONE_FAMILIES.items() if family in families)
            raise ConfigError(
                f"{entry.field}: method {entry.method!r} cannot train {', '.join(wrong)}; accepted: "
                f"{', '.join(accepted)} (set methods.{entry.method}.backbone to give it its own backbones)"
            )
    return entries


def registry_errors(sweep: SweepConfig) -> list[tuple[str, str]]:
    """(field, message) for every name the sweep gives that no registry knows: methods, backbones,
    class-weight rules, fusion rules. Checked here, where the registries are, so that the schema
    (:mod:`ssl_hpc.config`) imports none of them."""
    methods = ", ".join(sorted(METHODS))
    errors = []

    def check(field: str, value: str, registry, what: str) -> None:
        if value not in registry:
            errors.append((field, f"unknown {what} {value!r}; accepted: {', '.join(sorted(registry))}"))

    for index, method in enumerate(sweep.grid.method):
        check(f"grid.method[{index}]", method, METHODS, "method")
    for index, backbone in enumerate(sweep.grid.backbone):
        check(f"grid.backbone[{index}]", backbone, BACKBONES, "backbone")
    for index, rule in enumerate(sweep.grid.class_weight):
        if not is_known_rule(rule):
            errors.append(
                (
                    f"grid.class_weight[{index}]",
                    f"unknown class weight rule {rule!r}; accepted: {', '.join(CLASS_WEIGHT_RULES)}, "
                    "or critical:<class>=<weight> (e.g. critical:COVID=3)",
                )
            )
    for name in sweep.methods:
        check(f"methods.{name}", name, METHODS, "method")
    for section, entries in (("methods", sweep.methods), ("variants", sweep.variants)):
        for name, overrides in entries.items():
            for index, backbone in enumerate(overrides.backbone or []):
                check(f"{section}.{name}.backbone[{index}]", backbone, BACKBONES, "backbone")
    for name, variant in sweep.variants.items():
        check(f"variants.{name}.method", variant.method, METHODS, "method")
        if name in METHODS:
            errors.append(
                (
                    f"variants.{name}",
                    f"variant name {name!r} is a method's name ({methods}); give the variant its own name",
                )
            )
    for index, rule in enumerate(sweep.aggregate.rules):
        check(f"aggregate.rules[{index}]", rule, FUSION_RULES, "fusion rule")
    check("aggregate.reference", sweep.aggregate.reference, METHODS, "reference method")
    return errors


def check_registered_names(sweep: SweepConfig, source: str = "sweep") -> None:
    """Raises :class:`ConfigError` naming every field whose name no registry knows."""
    errors = registry_errors(sweep)
    if errors:
        raise ConfigError("\n".join(f"{source}: {field}: {message}" for field, message in errors))


def expand_jobs(sweep: SweepConfig) -> list[Job]:
    """All jobs of the sweep, pretraining jobs first, each pretraining job listed once. Refuses names
    no registry knows (:func:`check_registered_names`) before anything else."""
    check_registered_names(sweep)
    grid = sweep.grid
    pretrain_jobs: dict[str, Job] = {}
    finetune_jobs: dict[str, Job] = {}
    for entry in _entries(sweep):
        spec = METHODS[entry.method]
        overrides = entry.overrides
        model = ModelSettings(
            **{**spec.model_defaults, **_layer(sweep.model), **(overrides.model if overrides else {})}
        )
        pretrain_settings = PretrainSettings(
            **{**spec.pretrain_defaults, **_layer(sweep.pretrain), **(overrides.pretrain if overrides else {})}
        )
        pretrain_settings = _relevant_pretrain(pretrain_settings, entry.method, spec.view_preset)
        finetune_layers = {
            **spec.finetune_defaults,
            **_layer(sweep.finetune),
            **(overrides.finetune if overrides else {}),
        }
        if model.pretrained_weights == IMAGENET:
            missing = [b for b in entry.backbones if b not in IMAGENET_WEIGHTS]
            if missing:
                raise ConfigError(
                    f"{entry.field}: no ImageNet weights for {', '.join(missing)} ({entry.name}); "
                    f"accepted: {', '.join(sorted(IMAGENET_WEIGHTS))}"
                )
        for seed, dataset, size, backbone in itertools.product(sweep.seeds, grid.dataset, grid.size, entry.backbones):
            model_name = entry.name if len(entry.backbones) == 1 else f"{entry.name}_{backbone}"
            family = FAMILY_FINETUNE_DEFAULTS.get(BACKBONE_FAMILIES.get(backbone, ""), {})
            finetune_base = FinetuneSettings(**{**family, **finetune_layers})
            common = dict(
                method=entry.method,
                dataset=dataset,
                size=size,
                backbone=backbone,
                seed=seed,
                model=model,
                data=sweep.data,
                dataset_spec=sweep.datasets.get(dataset),
            )
            pretrain_key = None
            if spec.needs_pretraining:
                views = pretrain_settings
                if spec.view_preset == "contrastive" and views.modality == "auto":
                    views = views.model_copy(
                        update={"modality": dataset_modality(dataset, sweep.datasets.get(dataset))}
                    )
                pretrain_config = RunConfig(stage="pretrain", pretrain_settings=views, **common)
                pretrain_key = run_key(pretrain_config)
                pretrain_jobs.setdefault(pretrain_key, Job(pretrain_key, pretrain_config, model_name=model_name))
            modes = [spec.fixed_finetune] if spec.fixed_finetune else grid.finetune
            for fraction, per_class, class_weight, mode in itertools.product(
                grid.label_fraction, grid.labels_per_class, grid.class_weight, modes
            ):
                if mode == "knn":  # a k-NN vote has no loss to weigh: one job serves every class-weight rule
                    class_weight = "none"
                config = RunConfig(
                    stage="finetune",
                    finetune=mode,
                    label_fraction=fraction,
                    labels_per_class=per_class,
                    class_weight=class_weight,
                    finetune_settings=_relevant(finetune_base, mode, class_weight),
                    pretrain_key=pretrain_key,
                    **common,
                )
                key = run_key(config)
                depends = (pretrain_key,) if pretrain_key else ()
                same = finetune_jobs.setdefault(key, Job(key, config, depends, model_name=model_name))
                if same.model_name != model_name:
                    raise ConfigError(
                        f"variants: {model_name!r} runs exactly the same jobs as {same.model_name!r} "
                        "(same method and settings); give it a setting of its own or remove it"
                    )
    if sweep.cam.enabled and "cam" in sweep.cam.methods:
        check_plain_cam(finetune_jobs.values(), sweep.cam.target_layer)
    return [*pretrain_jobs.values(), *finetune_jobs.values()]


def check_plain_cam(jobs: Iterable[Job], target_layer: str | None = None) -> None:
    """Plain CAM (``cam`` in ``cam.methods``) explains only a global-average-pooling + linear head: a
    fine-tune job whose head or backbone rules that out is refused here, before anything trains, not
    when its explain step starts after training. k-NN jobs have no head and are not explained."""
    from ssl_hpc.explain.plain_cam import WHY, config_refusal  # pytorch-grad-cam: only when asked for

    reasons: dict[str, list[str]] = {}
    for job in jobs:
        config = job.config
        if config.finetune == "knn":
            continue
        family = BACKBONE_FAMILIES.get(config.backbone, "")
        why = config_refusal(config.finetune_settings.head, config.backbone, family, target_layer)
        if why:
            reasons.setdefault(why, []).append(job.model_name or config.method)
    if reasons:
        found = "; ".join(f"{why} ({', '.join(sorted(set(models)))})" for why, models in reasons.items())
        raise ConfigError(f"cam.methods: 'cam' cannot explain these fine-tuned models: {found}. {WHY}; remove 'cam'")


def order_jobs(jobs: list[Job]) -> list[Job]:
    """Jobs with every dependency before its dependents (stable otherwise)."""
    by_key = {job.key: job for job in jobs}
    ordered: list[Job] = []
    placed: set[str] = set()

    def place(job: Job, trail: tuple[str, ...]) -> None:
        if job.key in placed:
            return
        if job.key in trail:
            raise ValueError(f"dependency cycle through {job.key}")
        for dependency in job.depends_on:
            if dependency not in by_key:
                raise ValueError(f"job {job.key} depends on {dependency}, which is not in the sweep")
            place(by_key[dependency], (*trail, job.key))
        placed.add(job.key)
        ordered.append(job)

    for job in jobs:
        place(job, ())
    return ordered
