"""One registry of backbones: a name in ``grid.backbone`` -> a feature extractor.

Every backbone maps float images ``[N, C, H, W]`` (already normalised) to features ``[N, F]`` and
says what the rest of the suite needs to know about it: its feature width, its stages in order
(for "last N stages trainable"), the layer CAMs look at, and the input normalisation it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    num_features: int
    stages: tuple[str, ...]          # module names, input side first (the stem is not a stage)
    cam_layer: str                   # module name of the layer CAMs target
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: str                      # "resnet", "vit", "cnn"
    token_grid: tuple[int, int] | None = None  # ViTs: the patch grid, for CAM reshape transforms
    prefix_tokens: int = 0                     # ViTs: class/register tokens before the patch tokens


class Backbone(nn.Module):
    """A feature extractor plus the facts about it in :class:`BackboneInfo`."""

    def __init__(self, body: nn.Module, info: BackboneInfo):
        super().__init__()
        self.body = body
        self.info = info

    @property
    def num_features(self) -> int:
        return self.info.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    def stage_modules(self) -> list[nn.Module]:
        return [self.body.get_submodule(name) for name in self.info.stages]


@dataclass(frozen=True)
class BackboneRequest:
    """What a builder gets: the input it will see and the architectural options."""

    in_channels: int
    image_size: int
    stem: str = "imagenet"
    patch_size: int | None = None


BackboneBuilder = Callable[[BackboneRequest], Backbone]
BACKBONES: dict[str, BackboneBuilder] = {}
HALF = (0.5,)


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = builder
        return builder

    return decorator


def build_backbone(name: str, request: BackboneRequest) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; accepted: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](request)


# --------------------------------------------------------------------------- ResNets (torchvision)


def _resnet(factory: Callable[..., torchvision.models.ResNet], request: BackboneRequest) -> Backbone:
    """A torchvision ResNet from scratch, without its classifier.

    ``stem="imagenet"`` keeps the 7x7/2 conv and max-pool (as the thesis did, even at 28 px);
    ``stem="small"`` uses a 3x3/1 conv and no pool, the usual choice for 28-64 px inputs.
    """
    model = factory(weights=None)
    if request.stem == "small":
        model.conv1 = nn.Conv2d(request.in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif request.stem == "imagenet":
        if request.in_channels != 3:
            model.conv1 = nn.Conv2d(request.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    else:
        raise ValueError(f"unknown stem {request.stem!r}; accepted: imagenet, small")
    num_features = model.fc.in_features
    model.fc = nn.Identity()
    info = BackboneInfo(
        num_features=num_features,
        stages=("layer1", "layer2", "layer3", "layer4"),
        cam_layer=f"layer4.{len(model.layer4) - 1}",
        mean=HALF * request.in_channels,
        std=HALF * request.in_channels,
        family="resnet",
    )
    return Backbone(model, info)


for _name, _factory in {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}.items():
    register_backbone(_name)(lambda request, _factory=_factory: _resnet(_factory, request))


# --------------------------------------------------------------------------- ViTs (timm)


def default_patch_size(image_size: int) -> int:
    """4 px patches at 28-32 px (a 7x7 or 8x8 grid), 8 up to 64 px, 16 beyond (the standard ViTs)."""
    if image_size <= 32:
        return 4
    if image_size <= 64:
        return 8
    return 16


def vit_body(timm_name: str, request: BackboneRequest, **overrides) -> timm.models.VisionTransformer:
    patch = request.patch_size or default_patch_size(request.image_size)
    if request.image_size % patch:
        raise ValueError(f"image size {request.image_size} is not a multiple of the ViT patch size {patch}")
    return timm.create_model(timm_name, pretrained=False, img_size=request.image_size, patch_size=patch,
                             in_chans=request.in_channels, num_classes=0, **overrides)


def vit_info(body: timm.models.VisionTransformer, in_channels: int) -> BackboneInfo:
    return BackboneInfo(
        num_features=body.num_features,
        stages=tuple(f"blocks.{index}" for index in range(len(body.blocks))),
        cam_layer=f"blocks.{len(body.blocks) - 1}.norm1",
        mean=HALF * in_channels,
        std=HALF * in_channels,
        family="vit",
        token_grid=tuple(body.patch_embed.grid_size),
        prefix_tokens=body.num_prefix_tokens,
    )


def _vit(timm_name: str, request: BackboneRequest) -> Backbone:
    body = vit_body(timm_name, request)
    return Backbone(body, vit_info(body, request.in_channels))


for _name, _timm_name in {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}.items():
    register_backbone(_name)(lambda request, _timm_name=_timm_name: _vit(_timm_name, request))
