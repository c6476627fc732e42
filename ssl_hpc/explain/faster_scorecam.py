"""Faster Score-CAM: Score-CAM restricted to the activation channels of highest variance.

Score-CAM (Wang et al., 2020) weighs each channel of the target layer by the class score of the image
masked with that channel's (upsampled, min-max scaled) map: one forward pass per channel per image,
512 of them on a ResNet-18's layer4. Faster Score-CAM keeps, per image, only the ``max_channels``
channels whose maps vary most over the grid (a near-constant map masks the image uniformly and says
little about where the evidence is); the others get weight 0, and the softmax over the scores runs
over the kept channels only. With ``max_channels`` at least the layer's channel count every channel
is kept and the result is pytorch-grad-cam's :class:`~pytorch_grad_cam.ScoreCAM` (the test checks it).

The scoring itself is pytorch-grad-cam's: this class only chooses which channels it sees.
"""

from __future__ import annotations

import numpy as np
from pytorch_grad_cam import ScoreCAM


def top_variance_channels(activations: np.ndarray, count: int) -> np.ndarray:
    """Per image, the indices ``[N, min(count, C)]`` of the ``count`` channels of ``activations``
    ``[N, C, h, w]`` whose maps have the highest variance over the grid (ties: lower index first)."""
    variance = activations.reshape(*activations.shape[:2], -1).var(axis=2)
    return np.argsort(-variance, axis=1, kind="stable")[:, : min(count, activations.shape[1])]


class FasterScoreCAM(ScoreCAM):
    """pytorch-grad-cam's ScoreCAM, scoring only the ``max_channels`` channels of highest variance."""

    def __init__(self, model, target_layers, reshape_transform=None, max_channels: int = 32):
        if max_channels < 1:
            raise ValueError(f"cam.max_channels must be at least 1, got {max_channels}")
        super().__init__(model, target_layers, reshape_transform=reshape_transform)
        self.max_channels = max_channels

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        chosen = top_variance_channels(activations, self.max_channels)
        kept = np.ascontiguousarray(np.take_along_axis(activations, chosen[:, :, None, None], axis=1))
        kept_weights = super().get_cam_weights(input_tensor, target_layer, targets, kept, grads)
        weights = np.zeros(activations.shape[:2], dtype=kept_weights.dtype)
        np.put_along_axis(weights, chosen, kept_weights, axis=1)
        return weights
