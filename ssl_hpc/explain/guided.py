"""Guided Grad-CAM (Selvaraju et al., 2017): guided backpropagation times the upsampled Grad-CAM map.

Grad-CAM says *where* (a coarse map at the target layer's grid); guided backpropagation (Springenberg
et al., 2015: the input gradient with every ReLU passing back only positive gradients where its input
was positive) says *which pixels* (fine, but barely class-discriminative). Their pointwise product is
pixel-level and class-discriminative. Both parts are pytorch-grad-cam's: :class:`GradCAM` for the map
(ReLU, min-max scaled to [0, 1], bilinearly upsampled to the input) and
:class:`GuidedBackpropReLUModel` for the gradient, multiplied as in its ``cam.py`` example.

The product has one value per input channel; the figures and scores take one non-negative 2-D map per
image, so it is reduced to ``|guided x cam|`` summed over the channels and divided by its per-image
maximum (a map that is zero everywhere -- Grad-CAM blank -- stays zero): float32 in [0, 1] like
every other method's maps. Networks without ``nn.ReLU`` modules (ViTs: GELU) have nothing to guide,
and their guided backpropagation is the plain input gradient.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
from torch import nn


def reduce_to_map(pixel_maps: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` pixel-level maps -> ``[N, H, W]`` float32 in [0, 1]: absolute value summed over
    channels, divided by each map's maximum (an all-zero map stays zero)."""
    energy = np.abs(np.asarray(pixel_maps, dtype=np.float32)).sum(axis=-1)
    peak = energy.reshape(len(energy), -1).max(axis=1)
    return (energy / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


@contextlib.contextmanager
def relus_kept(model: nn.Module) -> Iterator[None]:
    """:class:`GuidedBackpropReLUModel` swaps every ``nn.ReLU`` for its guided one and back for *new*
    ``nn.ReLU()`` objects: hooks on the old ones (a CAM target layer that is a ReLU, as the small CNNs'
    is) would be orphaned and ``inplace`` lost. The original modules are put back, even after an error."""
    originals = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if isinstance(child, nn.ReLU)
    ]
    try:
        yield
    finally:
        for parent, name, child in originals:
            parent._modules[name] = child


def guided_backprop(model: nn.Module, images: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """pytorch-grad-cam's guided backpropagation of each image for its class, ``[N, H, W, C]``.

    :class:`GuidedBackpropReLUModel` explains one image per call (it reads image 0 of the batch)."""
    gradients = []
    with relus_kept(model):
        guided = GuidedBackpropReLUModel(model)
        for image, index in zip(images, classes):
            gradients.append(guided(image[None].detach().clone(), target_category=int(index)))
    return np.stack(gradients).astype(np.float32)


class GuidedGradCAM:
    """Called like a pytorch-grad-cam CAM object: ``cam(input_tensor=..., targets=...)`` -> ``[N, H, W]``."""

    def __init__(self, model: nn.Module, target_layers: list[nn.Module], reshape_transform=None):
        self.model = model
        self.gradcam = GradCAM(model, target_layers, reshape_transform=reshape_transform)
        self.activations_and_grads = self.gradcam.activations_and_grads

    def __call__(self, input_tensor: torch.Tensor, targets: list) -> np.ndarray:
        coarse = self.gradcam(input_tensor=input_tensor, targets=targets)
        fine = guided_backprop(self.model, input_tensor, [target.category for target in targets])
        return reduce_to_map(fine * coarse[..., None])
