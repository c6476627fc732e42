"""Supervised training with labels: the reference model and the fine-tuning modes.

``frozen`` trains only the head; the backbone is kept in eval mode, so not one weight and not one
BatchNorm statistic of it moves. ``partial`` opens the last N stages; ``end_to_end`` trains all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.data.augment import to_unit_float
from ssl_hpc.data.splits import ImageSplit
from ssl_hpc.evaluate.metrics import classification_metrics
from ssl_hpc.evaluate.predict import predict_logits, softmax_numpy
from ssl_hpc.models.classifier import Classifier

TRAINED_MODES = ("frozen", "partial", "end_to_end")


def configure_trainable(
    model: Classifier,
    mode: str,
    trainable_last: int = 1,
    trainable_layers: int | None = None,
    trainable_from: str | None = None,
) -> list[str]:
    """Sets ``requires_grad`` for ``mode``; returns the backbone modules left trainable.

    ``partial`` opens, in this order of precedence: everything from the module named
    ``trainable_from`` on (e.g. VGG-19's ``features.34``, the report's ``block5_conv4``); the last
    ``trainable_layers`` layers with weights (the Keras-style count of the reports, BatchNorm
    included); or the last ``trainable_last`` stages. The head always trains.
    """
    if mode not in TRAINED_MODES:
        raise ValueError(f"unknown fine-tune mode {mode!r}; accepted: {', '.join(TRAINED_MODES)}")
    model.requires_grad_(True)
    if mode == "end_to_end":
        return ["*"]
    model.backbone.requires_grad_(False)
    if mode == "frozen":
        return []
    body = model.backbone.body
    layers = [name for name, module in body.named_modules() if any(True for _ in module.parameters(recurse=False))]
    if trainable_from is not None:
        opened = modules_from(body, trainable_from)
    elif trainable_layers is not None:
        if not 1 <= trainable_layers <= len(layers):
            raise ValueError(
                f"trainable_layers={trainable_layers} but the backbone has {len(layers)} layers with weights"
            )
        opened = layers[-trainable_layers:]
    else:
        stages = list(model.backbone.info.stages)
        if not 1 <= trainable_last <= len(stages):
            raise ValueError(f"trainable_last={trainable_last} but the backbone has {len(stages)} stages: {stages}")
        opened = modules_from(body, stages[-trainable_last])
    for name in opened:
        body.get_submodule(name).requires_grad_(True)
    return opened


def modules_from(body: nn.Module, first: str) -> list[str]:
    """The modules with weights from ``first`` on, in the network's order."""
    names = [name for name, _ in body.named_modules()]
    if first not in names:
        raise ValueError(f"no module {first!r} in the backbone; e.g. {', '.join(n for n in names[1:12] if n)} ...")
    started = False
    opened = []
    for name, module in body.named_modules():
        started = started or name == first
        if started and any(True for _ in module.parameters(recurse=False)):
            opened.append(name)
    return opened


def set_train_mode(model: Classifier, opened: list[str]) -> None:
    """Training mode only where weights train: frozen parts keep their BatchNorm statistics."""
    model.train()
    if opened == ["*"]:
        return
    model.backbone.eval()
    for name in opened:  # modules with weights of their own (convolutions, norms, linears)
        model.backbone.body.get_submodule(name).train()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class ClassificationTask:
    """Cross-entropy on labelled batches, validated on the validation split each epoch."""

    def __init__(
        self,
        model: Classifier,
        opened_stages: list[str],
        val: ImageSplit,
        class_weights: torch.Tensor | None = None,
        augment: nn.Module | None = None,
        eval_batch_size: int = 512,
    ):
        self.module = model
        self.opened_stages = opened_stages
        self.val = val
        self.class_weights = class_weights
        self.augment = augment
        self.eval_batch_size = eval_batch_size

    def param_groups(self) -> list[nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        set_train_mode(self.module, self.opened_stages)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = to_unit_float(images)
        if self.augment is not None:
            batch = self.augment(batch)
        return self.cross_entropy(self.module(batch), labels)

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.class_weights)

    def after_step(self, progress: float) -> None:
        pass

    def val_logits(self) -> torch.Tensor:
        """The model's logits on the validation split (float32, eval mode)."""
        return predict_logits(self.module, self.val.images, self.eval_batch_size)

    def validate(self) -> dict[str, float]:
        logits = self.val_logits()
        labels = self.val.labels
        metrics = classification_metrics(labels.cpu().numpy(), softmax_numpy(logits), prefix="val_")
        keep = {name: metrics[name] for name in ("val_acc", "val_balanced_acc", "val_auc")}
        keep["val_loss"] = float(F.cross_entropy(logits, labels))
        return keep


def class_weight_tensor(weights: np.ndarray | None, device: torch.device) -> torch.Tensor | None:
    return None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=device)
