"""The original CAM (Zhou et al., 2016): the class's linear weights times the last feature maps.

It is defined only for a network whose logits are ``W @ mean_{h,w}(A) + b``: global average pooling
of the feature maps ``A`` followed by one linear layer. Then the map ``sum_k W[c, k] A_k`` is exactly
how much each place contributes to the class's logit. pytorch-grad-cam does not ship it; it is one
``get_cam_weights`` on its :class:`BaseCAM` (so the ReLU, min-max scaling and upsampling are the same
as every other method's). For such a head, Grad-CAM's weights (the gradients averaged over the grid)
are ``W[c] / (h w)``: CAM and Grad-CAM give the same map (the tests check it).

Heads that are not GAP + linear are refused, not approximated: an MLP head (``finetune.head: mlp``),
a ViT (its head reads the class token, or tokens pooled after a final norm, not a layer's maps), a
VGG (two fully connected layers after the pooling), or a target layer that is not the one pooled.
:func:`config_refusal` names the cases known from a sweep's settings (checked when the sweep is
expanded, before training); :func:`check_pooled_linear` checks the model itself, numerically, when the
explain step starts (:func:`ssl_hpc.explain.cams.plain_cam_target`).
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam.base_cam import BaseCAM
from torch import nn

WHY = "plain CAM needs a head of global average pooling + one linear layer (Zhou et al., 2016)"
# Backbones whose CAM layer is not the one pooled: timm's VGG runs its two fully connected layers (as
# convolutions, a ConvMlp) between the last conv block and the global average pooling.
NOT_POOLED_LINEAR = {
    name: "timm's VGG has two fully connected layers between its CAM layer and the pooling"
    for name in ("vgg16", "vgg19")
}


class PlainCAM(BaseCAM):
    """CAM with the head's weights: ``weight`` ``[K, C]``, one row per class, one column per channel."""

    def __init__(self, model: nn.Module, target_layers: list[nn.Module], weight: np.ndarray, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform=reshape_transform, uses_gradients=False)
        self.weight = np.asarray(weight, dtype=np.float32)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        return np.stack([self.weight[int(target.category)] for target in targets])


def config_refusal(head: str, backbone: str, family: str, target_layer: str | None = None) -> str | None:
    """Why ``cam`` cannot explain a fine-tuned ``backbone`` with this ``head``, known from settings
    alone; None when only the model can tell (:func:`check_pooled_linear`), as for any ``cam.target_layer``
    on a CNN."""
    if head != "linear":
        return f"the {head} head is not one linear layer (finetune.head: linear is)"
    if family == "vit":
        return f"{backbone} is a ViT: its head reads the class token or pooled tokens, not a layer's maps"
    if backbone in NOT_POOLED_LINEAR and target_layer is None:
        return f"{backbone}: {NOT_POOLED_LINEAR[backbone]}"
    return None


def check_pooled_linear(model: nn.Module, layer: str, sample: torch.Tensor, tokens: bool = False) -> None:
    """Raises :class:`ValueError` naming ``cam.methods`` unless ``model``'s logits on ``sample`` are its
    linear head applied to the module ``layer``'s maps averaged over the grid (eval mode, float
    tolerance 1e-4 relative to the largest logit): the one case where plain CAM is defined."""
    head = model.head
    if not isinstance(head, nn.Linear):
        raise _refused(f"the head is {type(head).__name__}, not one nn.Linear")
    if tokens:
        raise _refused(f"{layer} outputs ViT tokens; a ViT's head does not average a layer's maps")
    outputs: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: outputs.append(out.detach()))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            logits = model(sample)
            maps = outputs[0]
            if maps.ndim != 4 or maps.shape[1] != head.in_features:
                raise _refused(
                    f"{layer} gives maps {tuple(maps.shape[1:])}; the head takes {head.in_features} features"
                )
            pooled = head(maps.mean(dim=(2, 3)))
    finally:
        handle.remove()
        model.train(was_training)
    scale = float(logits.abs().max()) + 1e-6
    if not torch.allclose(pooled, logits, rtol=1e-4, atol=1e-4 * scale):
        raise _refused(f"the logits are not the head applied to the grid average of {layer}'s maps")


def head_weight(model: nn.Module) -> np.ndarray:
    """The linear head's weight ``[K, C]`` as float32."""
    return model.head.weight.detach().cpu().numpy().astype(np.float32)


def _refused(why: str) -> ValueError:
    return ValueError(f"cam.methods: 'cam' cannot explain this model: {why}; {WHY}. Use gradcam instead")
