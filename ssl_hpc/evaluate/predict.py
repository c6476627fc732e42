"""Batched inference over an in-memory split."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssl_hpc.data.augment import to_unit_float


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int, autocast=None) -> torch.Tensor:
    """Logits (float32, on the images' device) of ``model`` in eval mode for uint8 ``images``."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = to_unit_float(images[start : start + batch_size])
        if autocast is not None:
            with autocast:
                outputs.append(model(batch).float())
        else:
            outputs.append(model(batch).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def softmax_numpy(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float64)
