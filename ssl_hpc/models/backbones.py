"""One registry of backbones: a name in ``grid.backbone`` -> a feature extractor.

Every backbone maps float images ``[N, C, H, W]`` (already normalised) to features ``[N, F]`` and
says what the rest of the suite needs to know about it: its feature width, its stages in order
(for "last N stages trainable"), the layer CAMs look at, and the input normalisation it expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from timm.models.vision_transformer import VisionTransformer
from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    num_features: int
    stages: tuple[str, ...]  # module names, input side first (the stem is not a stage)
    cam_layer: str  # module name of the layer CAMs target
    mean: tuple[float, ...]
    std: tuple[float, ...]
    family: str  # "resnet", "vit", "cnn"
    token_grid: tuple[int, int] | None = None  # ViTs: the patch grid, for CAM reshape transforms
    prefix_tokens: int = 0  # ViTs: class/register tokens before the patch tokens


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


@dataclass(frozen=True)
class BackboneRequest:
    """What a builder gets: the input it will see and the architectural options."""

    in_channels: int
    image_size: int
    stem: str = "imagenet"
    patch_size: int | None = None
    vit_pool: str = "token"


BackboneBuilder = Callable[[BackboneRequest], Backbone]
BACKBONES: dict[str, BackboneBuilder] = {}
BACKBONE_FAMILIES: dict[str, str] = {}  # known before building, so configs can be checked cheaply
HALF = (0.5,)


def register_backbone(name: str, family: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
    def decorator(builder: BackboneBuilder) -> BackboneBuilder:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = builder
        BACKBONE_FAMILIES[name] = family
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
    register_backbone(_name, "resnet")(lambda request, _factory=_factory: _resnet(_factory, request))


# --------------------------------------------------------------------------- ViTs (timm)

VIT_ARCHITECTURES: dict[str, dict[str, int]] = {
    # A 4-block ViT for 28-64 px experiments on a CPU or a small budget (smoke sweeps, tests).
    "vit_mini": {"embed_dim": 128, "depth": 4, "num_heads": 4},
    "vit_tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "vit_small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "vit_base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}


def default_patch_size(image_size: int) -> int:
    """4 px patches at 28-32 px (a 7x7 or 8x8 grid), 8 up to 64 px, 16 beyond (the standard ViTs)."""
    if image_size <= 32:
        return 4
    if image_size <= 64:
        return 8
    return 16


def vit_kwargs(name: str, request: BackboneRequest) -> dict:
    """The timm ``VisionTransformer`` arguments of a registered ViT for this input.

    ``vit_pool="avg"`` drops the class token (AIM's causal pretraining has none), ``"token"``
    keeps it; pretraining and fine-tuning build the same arguments, so weights carry over.
    """
    patch = request.patch_size or default_patch_size(request.image_size)
    if request.image_size % patch:
        raise ValueError(f"image size {request.image_size} is not a multiple of the ViT patch size {patch}")
    return dict(
        img_size=request.image_size,
        patch_size=patch,
        in_chans=request.in_channels,
        num_classes=0,
        class_token=request.vit_pool == "token",
        global_pool=request.vit_pool,
        no_embed_class=request.vit_pool == "avg",
        **VIT_ARCHITECTURES[name],
    )


def vit_backbone(body: VisionTransformer, in_channels: int) -> Backbone:
    info = BackboneInfo(
        num_features=body.num_features,
        stages=tuple(f"blocks.{index}" for index in range(len(body.blocks))),
        cam_layer=f"blocks.{len(body.blocks) - 1}.norm1",
        mean=HALF * in_channels,
        std=HALF * in_channels,
        family="vit",
        token_grid=tuple(body.patch_embed.grid_size),
        prefix_tokens=body.num_prefix_tokens,
    )
    return Backbone(body, info)


for _name in VIT_ARCHITECTURES:
    register_backbone(_name, "vit")(
        lambda request, _name=_name: vit_backbone(VisionTransformer(**vit_kwargs(_name, request)), request.in_channels)
    )


def _register_more() -> None:
    """Backbone families living in their own modules register themselves on import."""
    from ssl_hpc.models import cnn, timm_backbones  # noqa: F401


_register_more()
