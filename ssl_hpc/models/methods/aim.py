"""AIM (El-Nouby et al., 2024): autoregressive prediction of image patches with a causal ViT.

The backbone is lightly's ``MaskedCausalVisionTransformer``, a subclass of timm's ViT without a
class token (``model.vit_pool: avg``); fine-tuning builds the plain timm ViT with the same
arguments and loads these weights into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import AIMPredictionHead, MaskedCausalVisionTransformer

from ssl_hpc.models.backbones import BackboneRequest, vit_backbone, vit_kwargs
from ssl_hpc.models.methods.base import PretextModel
from ssl_hpc.models.methods.registry import ADAMW_PRETRAIN, MethodSpec, register


def head_width(embed_dim: int) -> int:
    """lightly's default head is 2048 wide whatever the encoder: right for ViT-B (768), but for a 128-wide
    ViT at 28 px it is 40x the encoder and makes AIM 20x slower than MAE on the same backbone. Four
    times the encoder's width, capped at that default, keeps ViT-B as lightly builds it."""
    return min(2048, 4 * embed_dim)


class AIM(PretextModel):
    def __init__(self, backbone):
        super().__init__(backbone)
        vit = backbone.body
        self.patch_size = vit.patch_embed.patch_size[0]
        self.num_patches = vit.patch_embed.num_patches
        utils.initialize_2d_sine_cosine_positional_embedding(pos_embedding=vit.pos_embed, has_class_token=False)
        channels = vit.patch_embed.proj.in_channels
        self.prediction_head = AIMPredictionHead(
            input_dim=vit.embed_dim,
            output_dim=channels * self.patch_size**2,
            hidden_dim=head_width(vit.embed_dim),
            num_blocks=1,
        )

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        vit = self.backbone.body
        mask = utils.random_prefix_mask(
            size=(len(images), self.num_patches), max_prefix_length=self.num_patches - 1, device=images.device
        )
        features = vit.forward_features(images, mask=mask)
        features = vit._pos_embed(features)
        predictions = self.prediction_head(features)
        patches = utils.normalize_mean_var(utils.patchify(images, self.patch_size))
        return F.mse_loss(predictions.float(), patches.float())


def build_aim(name: str, request: BackboneRequest, settings) -> AIM:
    if request.vit_pool != "avg":
        raise ValueError("AIM trains a ViT without a class token: set model.vit_pool: avg (its default)")
    body = MaskedCausalVisionTransformer(**vit_kwargs(name, request))
    return AIM(vit_backbone(body, request.in_channels))


register(
    MethodSpec(
        name="aim",
        needs_pretraining=True,
        description="AIM: autoregressive image model with a causal ViT (ViT backbones)",
        backbone_families=("vit",),
        views=1,
        view_preset="crop_flip",
        pretrain_defaults=ADAMW_PRETRAIN,
        model_defaults={"vit_pool": "avg"},
        build_pretext=build_aim,
    )
)
