"""The small CNNs of the rotation-prediction report, registered as backbones.

``rotnet_cnn`` is a VGG-like network of conv-BN-ReLU blocks, in the spirit of Gidaris et al.
(2018), used for the 4-way rotation pretext; ``small_cnn`` is the small network the report trained
from scratch on 100 labels as the baseline. Both end in global average pooling, so they accept
any input size.
"""

from __future__ import annotations

from torch import nn

from ssl_hpc.models.backbones import HALF, Backbone, BackboneInfo, BackboneRequest, register_backbone


def conv_block(in_channels: int, out_channels: int, convs: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(convs):
        layers += [
            nn.Conv2d(in_channels if index == 0 else out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _cnn(request: BackboneRequest, widths: tuple[int, ...], convs: int) -> Backbone:
    blocks = []
    channels = request.in_channels
    for index, width in enumerate(widths):
        blocks.append(conv_block(channels, width, convs, pool=index < len(widths) - 1))
        channels = width
    body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    last = len(widths) - 1
    info = BackboneInfo(
        num_features=channels,
        stages=tuple(str(index) for index in range(len(widths))),
        cam_layer=f"{last}.{3 * convs - 1}",  # the last block's final ReLU: its conv output, rectified
        mean=HALF * request.in_channels,
        std=HALF * request.in_channels,
        family="cnn",
    )
    return Backbone(body, info)


@register_backbone("rotnet_cnn", "cnn")
def rotnet_cnn(request: BackboneRequest) -> Backbone:
    return _cnn(request, widths=(64, 128, 256), convs=2)


@register_backbone("small_cnn", "cnn")
def small_cnn(request: BackboneRequest) -> Backbone:
    return _cnn(request, widths=(32, 64), convs=1)


@register_backbone("cnn10", "cnn")
def cnn10(request: BackboneRequest) -> Backbone:
    """The transfer-learning report's custom CNN trained from scratch: ten 3x3 convolutions."""
    return _cnn(request, widths=(32, 64, 128, 256, 256), convs=2)
