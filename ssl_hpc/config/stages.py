"""Settings of one run that are not grid axes: optimisation of each stage, the model, the data and
how the run executes. Defaults are the thesis's where it gave them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from ssl_hpc.config.base import Strict
from ssl_hpc.config.guidance import GuidanceSettings

# The leakage guard's defaults (see ssl_hpc.data.duplicates, calibrated on PneumoniaMNIST at 28 px):
# pHash bits, and the correlation of the 16 x 16 thumbnails that confirms a hash match.
DEFAULT_DUPLICATE_THRESHOLD = 8
DEFAULT_DUPLICATE_MIN_CORRELATION = 0.98


class StageSettings(Strict):
    """Optimisation settings shared by the pretraining and fine-tuning stages.

    The default schedule is the thesis's: lr halved every 20 epochs, never below 0.0005.
    """

    epochs: StrictInt = Field(100, ge=0)
    batch_size: StrictInt = Field(128, ge=1)
    optimizer: Literal["sgd", "lars", "adam", "adamw"] = "sgd"
    lr: StrictFloat = Field(0.05, gt=0)
    momentum: StrictFloat = Field(0.9, ge=0, lt=1)
    weight_decay: StrictFloat = Field(0.0, ge=0)
    schedule: Literal["step", "cosine", "constant"] = "step"
    step_epochs: StrictInt = Field(20, ge=1)
    step_gamma: StrictFloat = Field(0.5, gt=0, le=1)
    min_lr: StrictFloat = Field(0.0005, ge=0)
    warmup_epochs: StrictInt = Field(0, ge=0)


class PretrainSettings(StageSettings):
    """Pretext training. Views are augmented on whole batches on the training device."""

    crop_scale_min: StrictFloat = Field(0.2, gt=0, le=1)
    color_jitter: StrictFloat = Field(0.4, ge=0)
    gray_scale_prob: StrictFloat = Field(0.2, ge=0, le=1)
    blur_prob: StrictFloat = Field(0.0, ge=0, le=1)
    # What the contrastive views may change (ssl_hpc.data.augment): "auto" picks it from the dataset
    # (MedMNIST's blood, derma, path and tissue -> stain; pneumonia and chest -> xray; an image folder's
    # own `modality`), resolved before the run key is computed.
    modality: Literal["auto", "natural", "stain", "xray"] = "auto"
    extra_unlabeled: tuple[str, ...] = ()
    mask_ratio: StrictFloat = Field(0.75, gt=0, lt=1)  # MAE
    norm_pix_loss: StrictBool = True  # MAE: per-patch normalised targets (the MAE paper's default)
    # AIM: the prediction at position k regresses patch k+1, as the AIM paper (El-Nouby et al., 2024) and
    # apple/ml-aim. "same_patch" is lightly's example and the thesis's AIM, where position k sees its own
    # target through causal attention (it learns to copy): only for reproducing the thesis's numbers.
    aim_target: Literal["next_patch", "same_patch"] = "next_patch"


class FinetuneSettings(StageSettings):
    """Supervised training with labels: the reference model and every fine-tuning mode."""

    head: Literal["linear", "mlp"] = "linear"
    head_hidden: StrictInt = Field(512, ge=1)
    trainable_last: StrictInt = Field(1, ge=1)  # partial: the last N stages...
    trainable_layers: StrictInt | None = Field(None, ge=1)  # ... or the last N layers with weights...
    trainable_from: str | None = None  # ... or every layer from this module on
    knn_k: StrictInt = Field(20, ge=1)
    augment: Literal["none", "flip", "crop_flip"] = "none"
    select_by: Literal["val_acc", "val_balanced_acc", "val_auc", "val_loss", "last"] = "val_acc"
    early_stopping_patience: StrictInt | None = Field(None, ge=1)
    effective_number_beta: StrictFloat = Field(0.999, gt=0, lt=1)
    # CAM-guided fine-tuning (ssl_hpc.config.guidance); None: cross-entropy only. Needs masks.
    guidance: GuidanceSettings | None = None
    # Gradient accumulation: one optimiser step per this many batches of batch_size (an effective batch
    # of batch_size x accumulate_steps), e.g. when guidance's second-order graph does not fit in memory.
    accumulate_steps: StrictInt = Field(1, ge=1)


class ModelSettings(Strict):
    """Architecture choices that are not grid axes."""

    stem: Literal["imagenet", "small"] = "imagenet"
    input_size: StrictInt | None = Field(None, ge=8)
    vit_patch_size: StrictInt | None = Field(None, ge=1)
    vit_pool: Literal["token", "avg"] = "token"
    # Start the backbone from ImageNet weights ("imagenet": timm's, from the local cache) or from a
    # state-dict file (a path); None: random initialisation.
    pretrained_weights: str | None = None


class DataSettings(Strict):
    """``duplicates``: the leakage guard run before training (see :mod:`ssl_hpc.data.duplicates`):
    near-duplicate images across train/val/test are counted and logged (``report``), stop the run
    (``error``), or are not looked for (``off``). A pair counts when its perceptual hashes differ in at
    most ``duplicate_threshold`` of 64 bits and its 16 x 16 thumbnails correlate at least
    ``duplicate_min_correlation``."""

    to_rgb: StrictBool = False
    download: StrictBool = True
    duplicates: Literal["report", "error", "off"] = "report"
    duplicate_threshold: StrictInt = Field(DEFAULT_DUPLICATE_THRESHOLD, ge=0, le=32)
    duplicate_min_correlation: StrictFloat = Field(DEFAULT_DUPLICATE_MIN_CORRELATION, ge=-1, le=1)


class RuntimeSettings(Strict):
    """How a run executes; never part of the run key (results should not depend on it)."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: StrictBool = True
    channels_last: StrictBool = True
    compile: StrictBool = False
    eval_batch_size: StrictInt = Field(512, ge=1)
    num_threads: StrictInt | None = Field(None, ge=1)
    keep_checkpoints: StrictBool = False
    # A run's checkpoint is written at most once per this many seconds, and after its final epoch (0: after
    # every epoch). Each is the whole model with fsync (~45 MB for a ResNet-18): more than a 28 px epoch
    # of a frozen head or on a GPU. A preempted run re-trains at most this much; its metrics reach MLflow
    # as its checkpoints are written (ssl_hpc.train.loop).
    checkpoint_every_s: StrictInt = Field(60, ge=0)
    # Frozen fine-tuning without augmentation trains the head on features computed once per run
    # (ssl_hpc.train.feature_cache); false recomputes them every epoch (same results up to float noise).
    feature_cache: StrictBool = True
    # Resume from a checkpoint another version of the code wrote (by default it is moved aside and the run
    # restarts, so that a fixed bug does not live on in a resumed run).
    resume_other_version: StrictBool = False
