"""AIM (El-Nouby et al., 2024): autoregressive prediction of image patches with a causal ViT.

With a random prefix of P patches attended bidirectionally, the prediction at position k regresses the
next patch, k + 1, normalised per patch; only targets outside the prefix count (apple/ml-aim). Causal
attention lets position k see patches up to k, so it can never see its target. lightly's example
regresses patch k from position k, which causal attention lets it see: ``aim_target: same_patch`` keeps
that (the thesis's AIM) for reproducing old numbers only.

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
    def __init__(self, backbone, target: str = "next_patch"):
        super().__init__(backbone)
        self.target = target
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

    def predictions_and_targets(
        self, images: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(predictions, their target patches, which pairs count) for a prefix ``mask`` (True: causal,
        outside the prefix), each pair aligned on the first two dimensions."""
        vit = self.backbone.body
        features = vit._pos_embed(vit.forward_features(images, mask=mask))  # as lightly's AIM example
        predictions = self.prediction_head(features)
        patches = utils.normalize_mean_var(utils.patchify(images, self.patch_size))
        if self.target == "same_patch":
            return predictions, patches, torch.ones_like(mask)
        return predictions[:, :-1], patches[:, 1:], mask[:, 1:]  # position k -> patch k + 1 outside the prefix

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        mask = utils.random_prefix_mask(
            size=(len(images), self.num_patches), max_prefix_length=self.num_patches - 1, device=images.device
        )
        predictions, targets, counted = self.predictions_and_targets(images, mask)
        errors = F.mse_loss(predictions.float(), targets.float(), reduction="none").mean(dim=-1)
        return errors[counted].mean()


def build_aim(name: str, request: BackboneRequest, settings) -> AIM:
    if request.vit_pool != "avg":
        raise ValueError("AIM trains a ViT without a class token: set model.vit_pool: avg (its default)")
    body = MaskedCausalVisionTransformer(**vit_kwargs(name, request))
    return AIM(vit_backbone(body, request.in_channels), target=settings.aim_target)


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
