"""Builds the networks a run config asks for."""

from __future__ import annotations

import torch

from ssl_hpc.config import RunConfig
from ssl_hpc.models.backbones import Backbone, BackboneRequest, build_backbone
from ssl_hpc.models.classifier import Classifier, Preprocess, build_head
from ssl_hpc.models.pretrained import load_pretrained


def backbone_channels(config: RunConfig, dataset_channels: int) -> int:
    """ImageNet weights need 3 channels: a grayscale dataset is then expanded on the fly."""
    return 3 if config.data.to_rgb or config.model.pretrained_weights else dataset_channels


def backbone_request(config: RunConfig, dataset_channels: int) -> BackboneRequest:
    return BackboneRequest(
        in_channels=backbone_channels(config, dataset_channels),
        image_size=config.model.input_size or config.size,
        stem=config.model.stem,
        patch_size=config.model.vit_patch_size,
        vit_pool=config.model.vit_pool,
    )


def build_backbone_for(config: RunConfig, dataset_channels: int) -> Backbone:
    """The run's backbone: random, or with the pretrained weights the model settings name."""
    request = backbone_request(config, dataset_channels)
    backbone = build_backbone(config.backbone, request)
    if config.model.pretrained_weights:
        backbone = load_pretrained(backbone, config.backbone, config.model.pretrained_weights, request)
    return backbone


def preprocess_for(config: RunConfig, backbone: Backbone, dataset_channels: int) -> Preprocess:
    return Preprocess(
        in_channels=dataset_channels,
        out_channels=backbone_channels(config, dataset_channels),
        mean=backbone.info.mean,
        std=backbone.info.std,
        size=config.model.input_size,
    )


def build_classifier(
    config: RunConfig,
    num_classes: int,
    dataset_channels: int,
    backbone_state: dict[str, torch.Tensor] | None = None,
) -> Classifier:
    """Backbone (fresh, or with pretrained weights) + the configured head."""
    if config.finetune_settings is None:
        raise ValueError("build_classifier needs a fine-tune run config")
    backbone = build_backbone_for(config, dataset_channels)
    if backbone_state is not None:
        backbone.load_state_dict(backbone_state)
    settings = config.finetune_settings
    head = build_head(settings.head, backbone.num_features, num_classes, settings.head_hidden)
    return Classifier(preprocess_for(config, backbone, dataset_channels), backbone, head)
