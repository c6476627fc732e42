"""Pretrained backbone weights: ImageNet weights from timm's cache, or a state-dict file.

A run that asks for pretrained weights never starts from random ones: when the weights are not in
the local Hugging Face cache (compute nodes usually have no network), the error says how to fetch
them on a machine that has it. The login node fetches them before anything is submitted
(:func:`ensure_weights`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import timm
import torch

from ssl_hpc.models.backbones import Backbone, BackboneRequest
from ssl_hpc.models.timm_backbones import TIMM_CNNS

IMAGENET = "imagenet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# backbone name -> the timm checkpoint with its ImageNet weights (same module names as our body)
IMAGENET_WEIGHTS: dict[str, str] = {
    "resnet18": "resnet18.tv_in1k",
    "resnet34": "resnet34.tv_in1k",
    "resnet50": "resnet50.tv_in1k",
    "vit_tiny": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vgg16": "vgg16.tv_in1k",
    "vgg19": "vgg19.tv_in1k",
    "mobilenet_v1": "mobilenetv1_100.ra4_e3600_r224_in1k",
    "mobilenet_v2": "mobilenetv2_100.ra_in1k",
    "efficientnet_b0": "efficientnet_b0.ra_in1k",
    "densenet201": "densenet201.tv_in1k",
}


class PretrainedWeightsMissing(FileNotFoundError):
    """Pretrained weights were asked for and are not on this machine."""


def _hub_file(checkpoint: str) -> tuple[str, list[str]]:
    config = timm.models.get_pretrained_cfg(checkpoint)
    if config is None or not config.hf_hub_id:
        raise ValueError(f"timm has no downloadable weights for {checkpoint!r}")
    return config.hf_hub_id, ["model.safetensors", "pytorch_model.bin"]


def cached(checkpoint: str) -> bool:
    """Whether the checkpoint's weights are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    repository, files = _hub_file(checkpoint)
    return any(isinstance(try_to_load_from_cache(repository, name), str) for name in files)


def how_to_fetch(checkpoint: str) -> str:
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"fetch them on a machine with network:  python -c \"import timm; timm.create_model('{checkpoint}', "
        f'pretrained=True)"  then copy {cache} to this machine (or set HF_HOME to a shared copy), or point '
        "model.pretrained_weights at a state-dict file"
    )


def ensure_weights(backbone: str, weights: str | None, download: bool = True) -> None:
    """On the login node: the weights a run will need are here (downloaded if allowed and possible)."""
    if weights is None:
        return
    if weights != IMAGENET:
        if not Path(weights).expanduser().is_file():
            raise PretrainedWeightsMissing(f"model.pretrained_weights: no file {weights}")
        return
    if backbone not in IMAGENET_WEIGHTS:
        raise ValueError(f"no ImageNet weights for {backbone!r}; accepted: {', '.join(sorted(IMAGENET_WEIGHTS))}")
    checkpoint = IMAGENET_WEIGHTS[backbone]
    if cached(checkpoint):
        return
    if download and os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            timm.create_model(checkpoint, pretrained=True)
            if cached(checkpoint):
                return
        except Exception:  # no network here: report below what to do
            pass
    raise PretrainedWeightsMissing(
        f"ImageNet weights of {backbone} ({checkpoint}) are not in the local cache; " + how_to_fetch(checkpoint)
    )


def pretrained_state(backbone: str, weights: str, request: BackboneRequest) -> dict[str, torch.Tensor]:
    """The state dict to load into the backbone's body."""
    if weights != IMAGENET:
        state = torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        # A Backbone's own state dict (as saved by this suite) prefixes the body's names with "body.".
        if state and all(name.startswith("body.") for name in state):
            state = {name[len("body.") :]: tensor for name, tensor in state.items()}
        return state
    checkpoint = IMAGENET_WEIGHTS.get(backbone)
    if checkpoint is None:
        raise ValueError(f"no ImageNet weights for {backbone!r}; accepted: {', '.join(sorted(IMAGENET_WEIGHTS))}")
    if not cached(checkpoint):
        raise PretrainedWeightsMissing(
            f"ImageNet weights of {backbone} ({checkpoint}) are not on this machine; " + how_to_fetch(checkpoint)
        )
    extra = {"img_size": request.image_size} if backbone.startswith("vit_") else {}
    return timm.create_model(checkpoint, pretrained=True, num_classes=0, **extra).state_dict()


def load_pretrained(backbone_module: Backbone, backbone: str, weights: str, request: BackboneRequest) -> Backbone:
    """Loads the weights into the body (every body tensor must be covered) and switches the input
    normalisation to the one the weights were trained with."""
    state = pretrained_state(backbone, weights, request)
    expected = backbone_module.body.state_dict()
    missing = [name for name in expected if name not in state]
    if missing:
        raise ValueError(
            f"pretrained weights {weights!r} do not fit {backbone}: {len(missing)} tensors missing, "
            f"e.g. {', '.join(missing[:5])}"
        )
    wrong = [name for name in expected if state[name].shape != expected[name].shape]
    if wrong:
        raise ValueError(
            f"pretrained weights {weights!r} do not fit {backbone}: shapes differ for {', '.join(wrong[:5])}"
        )
    backbone_module.body.load_state_dict({name: state[name] for name in expected})
    mean, std = normalisation(backbone, request.in_channels)
    backbone_module.info = replace(backbone_module.info, mean=mean, std=std)
    return backbone_module


def normalisation(backbone: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    checkpoint = IMAGENET_WEIGHTS.get(backbone)
    config = timm.models.get_pretrained_cfg(checkpoint) if checkpoint else None
    mean = tuple(config.mean) if config is not None else IMAGENET_MEAN
    std = tuple(config.std) if config is not None else IMAGENET_STD
    return mean[:channels], std[:channels]


__all__ = [
    "IMAGENET",
    "IMAGENET_WEIGHTS",
    "TIMM_CNNS",
    "PretrainedWeightsMissing",
    "ensure_weights",
    "load_pretrained",
    "pretrained_state",
]
