"""CAMs inside the autograd graph, for losses on the map itself (CAM-guided fine-tuning).

pytorch-grad-cam returns numpy maps: right for explaining a trained model, useless for training one, since
no gradient flows back from them. Here the same maps are torch tensors computed from the activations the
training forward pass captured at the target layer:

- Grad-CAM: ``relu(sum_k mean(dS/dA_k) A_k)`` with ``dS/dA`` taken with ``create_graph=True``, so a loss on
  the map reaches every weight that shapes either the activations or the gradient-derived channel weights.
- Faster Score-CAM (:mod:`ssl_hpc.explain.faster_scorecam`): the ``max_channels`` channels of highest
  variance are weighed by the softmax (over channels) of the class logit of the image masked with each
  channel's upsampled, min-max scaled map. Those weights come from extra forward passes, run without
  gradient and in eval mode (masked images must not move BatchNorm statistics), as Score-CAM itself does:
  the map's gradient reaches the weights through the activations only.

Maps are then upsampled to the image (bilinear) and min-max scaled to [0, 1] per image, as pytorch-grad-cam
scales them, and scored against masks by :func:`region_means` (MAGTR and MANGTR, as
:mod:`ssl_hpc.explain.localization` defines them).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ssl_hpc.explain.cams import CamTarget, TokenGrid

SCALE_EPSILON = 1e-7  # pytorch-grad-cam's guard in scale_cam_image: an all-zero map stays all zero


class CamInGraph:
    """Captures ``target``'s output during ``model``'s forward passes inside :meth:`capture`, then turns it
    into maps. A frozen layer (no ``requires_grad``) has its output made a leaf that does, so Grad-CAM's
    channel weights still exist, and the loss reaches the weights after the layer (e.g. a linear head)."""

    def __init__(self, model: nn.Module, target: CamTarget):
        self.model = model
        self.target = target
        prefix = model.backbone.info.prefix_tokens
        self.reshape = TokenGrid(target.grid, prefix) if target.tokens else None
        self.activations: torch.Tensor | None = None
        self._capturing = False

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Forward passes inside keep the target layer's output (the last one) in :attr:`activations`."""

        def hook(_module, _inputs, output):
            if not self._capturing or not isinstance(output, torch.Tensor):
                return None
            if torch.is_grad_enabled() and not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.activations = output
            return output

        handle = self.target.module.register_forward_hook(hook)
        self._capturing = True
        try:
            yield
        finally:
            self._capturing = False
            handle.remove()

    def _grid(self, tensor: torch.Tensor) -> torch.Tensor:
        return (self.reshape(tensor) if self.reshape is not None else tensor).float()

    def gradcam(self, logits: torch.Tensor, classes: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        """Grad-CAM maps ``[B, h, w]`` (before upsampling and scaling) for ``classes``, from the activations
        captured in the forward pass that gave ``logits``."""
        activations = self._captured()
        score = logits.float().gather(1, classes[:, None]).sum()
        (grads,) = torch.autograd.grad(score, activations, create_graph=create_graph)
        acts, grads = self._grid(activations), self._grid(grads)
        weights = grads.mean(dim=(2, 3), keepdim=True)
        return F.relu((weights * acts).sum(dim=1))

    def faster_scorecam(
        self, images: torch.Tensor, classes: torch.Tensor, max_channels: int, chunk: int = 256
    ) -> torch.Tensor:
        """Faster Score-CAM maps ``[B, h, w]`` for ``classes`` on float ``images`` (those of the captured pass)."""
        activations = self._grid(self._captured())
        with torch.no_grad():
            weights = self._score_weights(images, classes, activations.detach(), max_channels, chunk)
        return F.relu((weights[:, :, None, None] * activations).sum(dim=1))

    def _score_weights(self, images, classes, acts, max_channels: int, chunk: int) -> torch.Tensor:
        batch, channels = acts.shape[:2]
        variance = acts.flatten(2).var(dim=2, unbiased=False)
        chosen = torch.argsort(-variance, dim=1, stable=True)[:, : min(max_channels, channels)]
        kept = acts.gather(1, chosen[:, :, None, None].expand(-1, -1, *acts.shape[2:]))
        upsampled = F.interpolate(kept, size=images.shape[-2:], mode="bilinear", align_corners=False)
        low = upsampled.amin(dim=(2, 3), keepdim=True)
        high = upsampled.amax(dim=(2, 3), keepdim=True)
        upsampled = (upsampled - low) / (high - low).clamp_min(SCALE_EPSILON)
        masked = (images[:, None] * upsampled[:, :, None]).flatten(0, 1)  # [B * k, C, H, W]
        repeated = classes.repeat_interleave(chosen.shape[1])
        with eval_modes(self.model):
            was_capturing, self._capturing = self._capturing, False  # the masked passes are not the map's
            try:
                logits = [self.model(masked[start : start + chunk]).float() for start in range(0, len(masked), chunk)]
                scores = torch.cat(logits).gather(1, repeated[:, None])
            finally:
                self._capturing = was_capturing
        kept_weights = torch.softmax(scores.view(batch, -1), dim=1)
        return torch.zeros(batch, channels, device=acts.device).scatter(1, chosen, kept_weights)

    def _captured(self) -> torch.Tensor:
        if self.activations is None:
            raise RuntimeError(f"no activations of {self.target.name} captured: run the model inside capture()")
        return self.activations


@contextlib.contextmanager
def eval_modes(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then each submodule's own mode back (a frozen backbone inside a training
    classifier stays in eval mode; ``model.train()`` would not restore that)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def scale_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[B, h, w]`` maps -> ``[B, H, W]``: upsampled (bilinear), then min-max scaled to [0, 1] per image."""
    upsampled = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    shifted = upsampled - upsampled.amin(dim=(1, 2), keepdim=True)
    return shifted / (shifted.amax(dim=(1, 2), keepdim=True) + SCALE_EPSILON)


RegionMeans = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def region_means(maps: torch.Tensor, masks: torch.Tensor) -> RegionMeans:
    """Per image: MAGTR (mean of ``maps`` inside ``masks``), MANGTR (mean outside), and whether each is
    defined (a non-empty region; a region that is not the whole image). Undefined values are 0, so they can
    stay in a graph; callers leave them out with the flags."""
    inside = (masks.reshape(maps.shape) != 0).to(maps.dtype)
    count = inside.sum(dim=(1, 2))
    outside_count = inside[0].numel() - count
    magtr = (maps * inside).sum(dim=(1, 2)) / count.clamp_min(1)
    mangtr = (maps * (1 - inside)).sum(dim=(1, 2)) / outside_count.clamp_min(1)
    return magtr, mangtr, count > 0, outside_count > 0
