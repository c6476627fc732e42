"""Class activation maps through pytorch-grad-cam: method names, target layers, batched maps.

Every map is computed on float images in [0, 1] (the :class:`~ssl_hpc.models.classifier.Classifier`
preprocesses itself), for the class the model predicts unless targets are given, and comes back
as pytorch-grad-cam returns it: ``[N, H, W]`` float32 at the input resolution, each map scaled
to [0, 1].
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.ablation_layer import AblationLayer, AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ssl_hpc.explain.faster_scorecam import FasterScoreCAM
from ssl_hpc.explain.guided import GuidedGradCAM
from ssl_hpc.explain.plain_cam import PlainCAM, check_pooled_linear, head_weight

log = logging.getLogger(__name__)

CAM_METHODS: dict[str, type] = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "guided_gradcam": GuidedGradCAM,
    "faster_scorecam": FasterScoreCAM,
    "cam": PlainCAM,
}
# Methods that score masked copies of one image per channel: explained one image at a time.
PER_CHANNEL_SCORING = ("scorecam", "faster_scorecam")


def metric_slug(method: str) -> str:
    """``gradcam++`` -> ``gradcampp``: MLflow metric names take no ``+``."""
    return method.replace("+", "p")


@dataclass(frozen=True)
class CamTarget:
    """The layer CAMs look at: its path inside the classifier and the grid its maps have."""

    name: str
    module: nn.Module
    grid: tuple[int, int]
    tokens: bool  # the layer outputs ViT tokens [N, T, D] (reshaped to the patch grid for CAMs)
    fell_back_from: str | None = None


class TokenGrid:
    """pytorch-grad-cam's ``reshape_transform`` for ViT layers: drops the prefix (class/register)
    tokens and lays the patch tokens out on their grid, channels first. Conv outputs pass through."""

    def __init__(self, grid: tuple[int, int], prefix_tokens: int):
        self.grid, self.prefix_tokens = grid, prefix_tokens

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim != 3:
            return tensor
        height, width = self.grid
        patches = tensor[:, self.prefix_tokens :, :]
        if patches.shape[1] != height * width:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {height}x{width} grid")
        return patches.reshape(tensor.shape[0], height, width, tensor.shape[2]).permute(0, 3, 1, 2)


def default_layer_name(model: nn.Module) -> str:
    return f"backbone.body.{model.backbone.info.cam_layer}"


def resolve_target(model: nn.Module, sample: torch.Tensor, override: str | None = None, min_grid: int = 1) -> CamTarget:
    """The target layer of ``model`` (a Classifier) and the grid of its maps, found by running ``sample``.

    ``override`` (a module path inside the classifier) wins as it is. Otherwise the backbone's
    ``info.cam_layer``; if its maps are coarser than ``min_grid`` on a side, the last block of the
    deepest backbone stage that is fine enough is used instead (and the choice is logged).
    """
    info = model.backbone.info
    names = [override] if override else [default_layer_name(model)]
    if not override:
        for stage in reversed(info.stages):
            stage_module = model.backbone.body.get_submodule(stage)
            children = list(stage_module.named_children()) if isinstance(stage_module, nn.Sequential) else []
            leaf = f"{stage}.{children[-1][0]}" if children else stage
            names.append(f"backbone.body.{leaf}")
    modules = {}
    for name in names:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            if name == override:
                raise ValueError(
                    f"cam.target_layer {override!r} is not a module of the classifier; e.g. "
                    f"{default_layer_name(model)!r}"
                ) from None
            raise
    shapes = _output_shapes(model, modules, sample)
    grids = {name: _grid(shapes[name], info) for name in names if name in shapes}
    first = names[0]
    if first not in grids:
        raise ValueError(f"CAM target layer {first!r} produced no output for the sample batch")
    chosen = first
    if not override and min(grids[first]) < min_grid:
        fine_enough = [name for name in names[1:] if name in grids and min(grids[name]) >= min_grid]
        if fine_enough:
            chosen = fine_enough[0]
            log.warning(
                "CAM layer %s gives %dx%d maps (< cam.min_cam_grid=%d); using %s (%dx%d) instead",
                first,
                *grids[first],
                min_grid,
                chosen,
                *grids[chosen],
            )
    return CamTarget(
        chosen,
        modules[chosen],
        grids[chosen],
        len(shapes[chosen]) == 3,
        fell_back_from=first if chosen != first else None,
    )


def _output_shapes(model: nn.Module, modules: dict[str, nn.Module], sample: torch.Tensor) -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    handles = []
    for name, module in modules.items():

        def hook(_module, _inputs, output, name=name):
            if isinstance(output, torch.Tensor):
                shapes.setdefault(name, tuple(output.shape))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return shapes


def _grid(shape: tuple, info) -> tuple[int, int]:
    if len(shape) == 4:
        return int(shape[2]), int(shape[3])
    if len(shape) == 3 and info.token_grid is not None:
        return tuple(info.token_grid)
    raise ValueError(f"cannot place a CAM layer output of shape {shape} on an image grid")


@contextlib.contextmanager
def gradients_everywhere(model: nn.Module) -> Iterator[None]:
    """Gradient CAMs need the target layer's output in the graph: a frozen backbone (``requires_grad``
    off) would give none. Parameters are opened for the duration, their grads dropped afterwards,
    and the model's train/eval mode restored."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    was_training = model.training
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
            parameter.grad = None
        model.train(was_training)


def plain_cam_target(
    model: nn.Module, sample: torch.Tensor, override: str | None = None, min_grid: int = 1
) -> CamTarget:
    """The layer plain CAM reads: ``override`` (``cam.target_layer``) or the backbone's CAM layer, never the
    finer fallback of ``cam.min_cam_grid`` (the head's weights apply to the pooled maps only), once
    :func:`~ssl_hpc.explain.plain_cam.check_pooled_linear` has found the model fit for it on ``sample``.
    A grid coarser than ``min_grid`` is kept, with a warning: a ResNet with its ImageNet stem pools 1 x 1
    maps at 28 px, and every plain CAM of it is blank."""
    target = resolve_target(model, sample[:1], override or default_layer_name(model))
    check_pooled_linear(model, target.name, sample, target.tokens)
    if min(target.grid) < min_grid:
        log.warning(
            "plain CAM reads %s, the layer the head pools: %dx%d maps (< cam.min_cam_grid=%d), too coarse to show "
            "where; they are kept (plain CAM is not defined at a finer layer)",
            target.name,
            *target.grid,
            min_grid,
        )
    return target


def build_cam(
    method: str, model: nn.Module, target: CamTarget, prefix_tokens: int, batch_size: int, max_channels: int = 32
):
    """A pytorch-grad-cam object for ``method`` on ``target`` (ScoreCAM/AblationCAM batch ``batch_size``;
    Faster Score-CAM keeps ``max_channels`` channels)."""
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; accepted: {', '.join(CAM_METHODS)}")
    reshape = TokenGrid(target.grid, prefix_tokens) if target.tokens else None
    cls = CAM_METHODS[method]
    if cls is AblationCAM:
        layer = AblationLayerVit() if target.tokens else AblationLayer()
        return AblationCAM(
            model, [target.module], reshape_transform=reshape, ablation_layer=layer, batch_size=batch_size
        )
    if cls is FasterScoreCAM:
        cam = FasterScoreCAM(model, [target.module], reshape_transform=reshape, max_channels=max_channels)
    elif cls is PlainCAM:
        cam = PlainCAM(model, [target.module], head_weight(model), reshape_transform=reshape)
    else:
        cam = cls(model, [target.module], reshape_transform=reshape)
    if isinstance(cam, ScoreCAM):
        cam.batch_size = batch_size  # read by ScoreCAM.get_cam_weights
    return cam


def compute_cams(
    model: nn.Module,
    images: torch.Tensor,
    method: str,
    target: CamTarget,
    classes: Sequence[int] | np.ndarray,
    batch_size: int = 64,
    method_batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    max_channels: int = 32,
) -> np.ndarray:
    """Maps ``[N, H, W]`` (float32 in [0, 1]) of ``method`` for ``classes`` on float ``images`` in [0, 1].

    ``cam`` (plain CAM) is refused with a :class:`ValueError` naming ``cam.methods`` unless ``target`` is
    the layer a global-average-pooling + linear head reads (:func:`plain_cam_target`)."""
    if len(images) == 0:
        return np.zeros((0, *images.shape[-2:]), dtype=np.float32)
    prefix = model.backbone.info.prefix_tokens
    if method == "cam":
        check_pooled_linear(model, target.name, images[:8], target.tokens)
    if method in PER_CHANNEL_SCORING:
        # pytorch-grad-cam's ScoreCAM masks every image with every channel at once (images x channels x
        # C x H x W) before batching over channels: one image at a time keeps that to one image's worth.
        batch_size = 1
    maps = []
    with gradients_everywhere(model):
        cam = build_cam(method, model, target, prefix, method_batch_size, max_channels)
        try:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + batch_size]]
                with _quiet(method):
                    maps.append(np.asarray(cam(input_tensor=batch, targets=targets), dtype=np.float32))
                if on_batch is not None:
                    on_batch(len(batch))
        finally:
            cam.activations_and_grads.release()
    return np.concatenate(maps)


@contextlib.contextmanager
def _quiet(method: str) -> Iterator[None]:
    """ScoreCAM and AblationCAM draw a tqdm bar per image on stderr; keep job logs readable."""
    if method in (*PER_CHANNEL_SCORING, "ablationcam"):
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    else:
        yield
