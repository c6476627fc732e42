"""Frozen fine-tuning on cached features: the backbone runs once per run, not once per epoch.

With ``finetune: frozen`` the backbone stays in eval mode and receives no gradient (see
:mod:`ssl_hpc.train.finetune`), so what it outputs for an image never changes; without augmentation
(``finetune.augment: none``) the images never change either. Every epoch would recompute the same
features, and at 28 px that recomputation is nearly all of a frozen run's time. So the train, val and
test features are computed once, on the run's device, with the model in eval mode and under the
loop's autocast, and the head is trained on them through the one loop (:func:`ssl_hpc.train.loop.fit`):
only the tensors the loop batches change (features instead of images) and the task's forward (the
head instead of the whole model).

The task's module is still the whole classifier, so checkpoints, the kept epoch's weights and
``model.pt`` hold backbone and head exactly as without the cache: CAMs work, and a run resumes from a
checkpoint either path wrote. Results equal the uncached path's up to floating-point noise (the
backbone sees other batch sizes). ``runtime.feature_cache: false`` turns the cache off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.evaluate.predict import forward_in_batches
from ssl_hpc.models.classifier import Classifier
from ssl_hpc.train.finetune import ClassificationTask
from ssl_hpc.train.loop import Precision

CACHED_SPLITS = ("train", "val", "test")


def uses_feature_cache(mode: str | None, augment: str, enabled: bool = True) -> bool:
    """Whether a fine-tune run may train on cached features: a frozen backbone on unaugmented images.
    Any augmentation changes the images, hence the features, every epoch: those runs recompute them."""
    return enabled and mode == "frozen" and augment == "none"


@dataclass(frozen=True)
class FeatureSplit:
    """A split's backbone features ``[N, D]`` (in the dtype the backbone gives under autocast: bf16 on a
    GPU, which the head would have been fed anyway) and its int64 labels ``[N]``."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.ndim != 2 or self.labels.shape != (self.features.shape[0],):
            raise ValueError(
                f"features must be [N, D] with labels [N], got {tuple(self.features.shape)} {tuple(self.labels.shape)}"
            )

    @property
    def images(self) -> torch.Tensor:
        """What the training loop batches (:class:`ssl_hpc.train.loop.Examples`): here, the features."""
        return self.features

    def __len__(self) -> int:
        return self.features.shape[0]


@dataclass(frozen=True)
class FeatureCache:
    """The frozen backbone's features of one run's splits, and the seconds computing them took."""

    train: FeatureSplit
    val: FeatureSplit
    test: FeatureSplit
    seconds: float


def cache_features(
    model: Classifier, splits: Mapping[str, ImageSplit], precision: Precision, batch_size: int
) -> FeatureCache:
    """The features of ``splits`` (``train``, ``val``, ``test``, on the device) through ``model``'s
    preprocessing and backbone, in eval mode, under ``precision``'s autocast."""
    started = time.perf_counter()

    def features(split: ImageSplit) -> FeatureSplit:
        raw = forward_in_batches(
            model, split.images, batch_size, lambda batch: model.features(to_unit_float(batch)), precision.autocast
        )
        return FeatureSplit(raw, split.labels)

    cached = {name: features(splits[name]) for name in CACHED_SPLITS}
    if precision.device.type == "cuda":
        torch.cuda.synchronize(precision.device)
    return FeatureCache(**cached, seconds=time.perf_counter() - started)


def head_logits(model: Classifier, split: FeatureSplit, batch_size: int, autocast=None) -> torch.Tensor:
    """``model``'s logits (float32, eval mode) from cached features: its head alone."""
    return forward_in_batches(
        model, split.features, batch_size, lambda features: model.head(features).float(), autocast
    )


class FeatureHeadTask(ClassificationTask):
    """:class:`ClassificationTask` on cached features: the same loss, weights, train modes and validation
    metrics, with the head's forward in place of the whole model's."""

    def __init__(
        self,
        model: Classifier,
        opened_stages: list[str],
        val: FeatureSplit,
        class_weights: torch.Tensor | None = None,
        eval_batch_size: int = 512,
    ):
        if opened_stages:
            raise ValueError(f"cached features need a frozen backbone, but {opened_stages} would train")
        super().__init__(model, opened_stages, val, class_weights, None, eval_batch_size)  # type: ignore[arg-type]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.cross_entropy(self.module.head(images), labels)

    def val_logits(self) -> torch.Tensor:
        return head_logits(self.module, self.val, self.eval_batch_size)  # type: ignore[arg-type]
