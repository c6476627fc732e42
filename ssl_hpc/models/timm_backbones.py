"""ImageNet-era architectures from timm, registered as backbones (the pulmonary report's models).

Trained from scratch by default; with ``model.pretrained_weights`` (see :mod:`ssl_hpc.models.pretrained`)
they start from ImageNet weights. Stages (for "last N stages trainable") are each network's
natural blocks; the CAM layer is its last convolutional stage.
"""

from __future__ import annotations

import timm
import torch

from ssl_hpc.models.backbones import HALF, Backbone, BackboneInfo, BackboneRequest, register_backbone

# name -> (timm architecture, stage module names input side first, CAM layer). A stage names the
# module it starts with ("last N stages trainable" opens everything from there on); ``None`` means
# the network's ``blocks``, and its CAM layer the last one.
TIMM_CNNS: dict[str, tuple[str, tuple[str, ...] | None, str | None]] = {
    # CAMs look at activations, as Keras's layers give them (the reports' block5_conv3/4, top_activation):
    # the ReLU after VGG's last conv, the BatchNorm+activation after EfficientNet's/MobileNet's conv_head.
    "vgg16": ("vgg16", tuple(f"features.{i}" for i in (0, 5, 10, 17, 24)), "features.29"),  # block5_conv3
    "vgg19": ("vgg19", tuple(f"features.{i}" for i in (0, 5, 10, 19, 28)), "features.35"),  # block5_conv4
    "mobilenet_v1": ("mobilenetv1_100", None, None),
    "mobilenet_v2": ("mobilenetv2_100", None, "bn2"),
    "efficientnet_b0": ("efficientnet_b0", None, "bn2"),
    "densenet201": (
        "densenet201",
        ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.denseblock4"),
        "features.norm5",
    ),
}


def _timm_cnn(name: str, request: BackboneRequest) -> Backbone:
    architecture, stages, cam_layer = TIMM_CNNS[name]
    body = timm.create_model(architecture, pretrained=False, num_classes=0, in_chans=request.in_channels)
    if stages is None:
        stages = tuple(f"blocks.{index}" for index in range(len(body.blocks)))
    cam_layer = cam_layer or stages[-1]
    with torch.no_grad():
        was_training = body.training
        body.eval()
        features = body(torch.zeros(1, request.in_channels, 64, 64)).shape[1]
        body.train(was_training)
    info = BackboneInfo(
        num_features=features,
        stages=stages,
        cam_layer=cam_layer,
        mean=HALF * request.in_channels,
        std=HALF * request.in_channels,
        family="cnn",
    )
    return Backbone(body, info)


for _name in TIMM_CNNS:
    register_backbone(_name, "cnn")(lambda request, _name=_name: _timm_cnn(_name, request))
