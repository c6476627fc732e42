"""Batched inference over an in-memory split.

Logits, a frozen backbone's features and a head's logits on cached features all go through
:func:`forward_in_batches`, so eval mode, batching and autocast are the same wherever a forward
pass is made without gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ssl_hpc.data.augment import to_unit_float


@torch.no_grad()
def forward_in_batches(
    model: nn.Module,
    inputs: torch.Tensor,
    batch_size: int,
    forward: Callable[[torch.Tensor], torch.Tensor],
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """``forward`` (a part of ``model``) over ``inputs`` batch by batch, with ``model`` in eval mode
    (BatchNorm on its running statistics: an example's output does not depend on its batch)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(inputs), batch_size):
        with autocast if autocast is not None else contextlib.nullcontext():
            outputs.append(forward(inputs[start : start + batch_size]))
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, autocast=None) -> torch.Tensor:
    """Logits (float32, on the images' device) of ``model`` in eval mode for uint8 ``images``."""
    return forward_in_batches(model, images, batch_size, lambda batch: model(to_unit_float(batch)).float(), autocast)


def softmax_numpy(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
