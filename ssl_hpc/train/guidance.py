"""CAM-guided fine-tuning: cross-entropy plus a term that pulls the class activation map into the mask.

It plugs into the one training loop as the fine-tune step's loss (:class:`GuidedClassificationTask`, a
:class:`~ssl_hpc.train.finetune.ClassificationTask`). The masks reach the training batches as one more
uint8 channel of the training images (:func:`pack_masks`): the loop batches, orders and resumes them with
the images without knowing, and a flip or crop moves image and mask together. The maps are computed on
the training batch inside the graph (:mod:`ssl_hpc.explain.in_graph`); the formulas are in
:mod:`ssl_hpc.config.guidance`.

Per epoch the task adds ``train_ce``, ``train_magtr``, ``train_mangtr`` (means over the epoch's images,
MAGTR/MANGTR over the images where they are defined) and, on validation, ``val_magtr`` and
``val_mangtr`` (the same maps for the true class, in eval mode); the loop's ``train_loss`` is the total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.config import CamSettings, GuidanceSettings
from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.data.splits import ImageSplit, LabeledDataset
from ssl_hpc.explain.cams import resolve_target
from ssl_hpc.explain.in_graph import CamInGraph, eval_modes, region_means, scale_maps
from ssl_hpc.models.classifier import Classifier
from ssl_hpc.train.finetune import ClassificationTask

MASK_ON = 255  # the packed mask channel: 0 outside, 255 inside (1.0 once the batch is scaled to [0, 1])


def guided_loss(
    settings: GuidanceSettings, ce: torch.Tensor, magtr: torch.Tensor, mangtr: torch.Tensor, has_mask: torch.Tensor
) -> torch.Tensor:
    """Per-image loss: the guidance formula where ``has_mask``, the cross-entropy alone elsewhere."""
    if settings.loss == "product":
        guided = ce * (1 - magtr)
    elif settings.loss == "division":
        guided = ce / (magtr + settings.epsilon)
    elif settings.loss == "weighted_sum":
        guided = settings.k1 * ce + settings.k2 * (1 - magtr) + settings.k3 * mangtr
    else:
        raise ValueError(f"unknown guidance loss {settings.loss!r}; accepted: product, division, weighted_sum")
    return torch.where(has_mask, guided, ce)


def pack_masks(split: ImageSplit, masks: torch.Tensor) -> ImageSplit:
    """``split`` with its masks (``[N, 1, H, W]``, non-zero inside) as one more image channel."""
    if masks.shape != (len(split), 1, *split.images.shape[-2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not fit images {tuple(split.images.shape)}")
    channel = (masks != 0).to(torch.uint8) * MASK_ON
    return ImageSplit(torch.cat([split.images, channel.to(split.images.device)], dim=1), split.labels)


def guided_train_split(dataset: LabeledDataset) -> ImageSplit:
    """The train split with its masks packed in; refuses a dataset without train masks before any training."""
    masks = (dataset.masks or {}).get("train")
    if masks is None:
        raise ValueError(
            f"finetune.guidance needs a mask per training image, but dataset {dataset.name!r} has none; "
            "accepted: an image folder declared with masks_subdir or mask_root (or remove finetune.guidance)"
        )
    return pack_masks(dataset.train, masks)


class GuidedClassificationTask(ClassificationTask):
    """Cross-entropy and CAM guidance on batches whose last channel is the mask (:func:`pack_masks`)."""

    def __init__(
        self,
        model: Classifier,
        opened_stages: list[str],
        val: ImageSplit,
        val_masks: torch.Tensor | None,
        guidance: GuidanceSettings,
        class_weights: torch.Tensor | None = None,
        augment: nn.Module | None = None,
        eval_batch_size: int = 512,
    ):
        super().__init__(model, opened_stages, val, class_weights, augment, eval_batch_size)
        self.guidance = guidance
        self.val_masks = val_masks
        self.cams = CamInGraph(model, guidance_target(model, val.images[:1], guidance.layer))
        self._sums: dict[str, torch.Tensor] = {}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = to_unit_float(images)
        if self.augment is not None:
            batch = self.augment(batch)  # geometric presets only: the mask channel moves with the image
        batch, masks = batch[:, :-1], batch[:, -1] > 0.5
        with self.cams.capture():
            logits = self.module(batch)
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        magtr, mangtr, has_mask, has_outside = region_means(self.maps(batch, logits, labels, True), masks)
        weights = self.class_weights[labels] if self.class_weights is not None else torch.ones_like(ce)
        total = (weights * guided_loss(self.guidance, ce, magtr, mangtr, has_mask)).sum() / weights.sum()
        self._add("train_ce", (weights * ce).sum().detach(), weights.sum())
        self._add("train_magtr", magtr.detach()[has_mask].sum(), has_mask.sum())
        self._add("train_mangtr", mangtr.detach()[has_outside].sum(), has_outside.sum())
        return total

    def maps(self, images: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, create_graph: bool):
        """The guidance maps ``[B, H, W]`` in [0, 1] for ``classes``, from the pass that gave ``logits``."""
        if self.guidance.map == "faster_scorecam":
            raw = self.cams.faster_scorecam(images, classes, self.guidance.max_channels)
        else:
            raw = self.cams.gradcam(logits, classes, create_graph=create_graph)
        return scale_maps(raw, tuple(images.shape[-2:]))

    def validate(self) -> dict[str, float]:
        metrics = super().validate()
        metrics.update(self._val_localization())
        for name, (total, count) in self._sums.items():
            metrics[name] = (total / count).item() if count.item() > 0 else float("nan")
        self._sums = {}
        return metrics

    def _val_localization(self) -> dict[str, float]:
        """``val_magtr`` / ``val_mangtr``: the guidance maps of the true class on the validation split."""
        if self.val_masks is None or len(self.val) == 0:
            return {}
        sums = torch.zeros(4, device=self.val.images.device)
        with torch.enable_grad(), eval_modes(self.module):
            for start in range(0, len(self.val), self.eval_batch_size):
                batch = to_unit_float(self.val.images[start : start + self.eval_batch_size])
                labels = self.val.labels[start : start + self.eval_batch_size]
                with self.cams.capture():
                    logits = self.module(batch)
                maps = self.maps(batch, logits, labels, create_graph=False).detach()
                magtr, mangtr, has_mask, has_outside = region_means(
                    maps, self.val_masks[start : start + self.eval_batch_size]
                )
                sums += torch.stack(
                    [magtr[has_mask].sum(), has_mask.sum(), mangtr[has_outside].sum(), has_outside.sum()]
                )
        magtr_sum, masked, mangtr_sum, outside = sums.tolist()
        return {
            "val_magtr": magtr_sum / masked if masked else float("nan"),
            "val_mangtr": mangtr_sum / outside if outside else float("nan"),
        }

    def _add(self, name: str, total: torch.Tensor, count: torch.Tensor | int) -> None:
        previous = self._sums.get(name)
        count = torch.as_tensor(count, device=total.device, dtype=torch.float32).detach()
        self._sums[name] = (total.float(), count) if previous is None else (previous[0] + total, previous[1] + count)


def guidance_target(model: Classifier, sample: torch.Tensor, layer: str | None):
    """The layer guidance reads: ``layer``, or the explain step's default (the backbone's CAM layer, or the
    deepest stage with at least ``cam.min_cam_grid``'s default grid). ``sample``: uint8 images."""
    try:
        return resolve_target(model, to_unit_float(sample), layer, CamSettings().min_cam_grid)
    except ValueError as error:
        if layer is not None:
            raise ValueError(str(error).replace("cam.target_layer", "finetune.guidance.layer", 1)) from None
        raise
