"""MAE (He et al., 2022): reconstruct the pixels of 75 % masked patches from the visible 25 %.

Built from lightly's masked ViT wrapper and decoder around the backbone's own timm ViT, so the
weights trained here are exactly the backbone's. The target is the patch as the backbone sees it
(after its normalisation), so 1-channel images reconstruct one channel; with ``norm_pix_loss`` (on by
default, as in the MAE paper, where it gave better representations) each target patch is normalised to
zero mean and unit variance first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM
from torch import nn

from ssl_hpc.models.backbones import build_backbone
from ssl_hpc.models.methods.base import PretextModel
from ssl_hpc.models.methods.registry import ADAMW_PRETRAIN, MethodSpec, register

DECODER_DIM = 256


class MAE(PretextModel):
    def __init__(self, backbone, mask_ratio: float = 0.75, decoder_depth: int = 2, norm_pix_loss: bool = True):
        super().__init__(backbone)
        vit = backbone.body
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = vit.patch_embed.patch_size[0]
        self.encoder = MaskedVisionTransformerTIMM(vit=vit)
        self.sequence_length = self.encoder.sequence_length
        self.decoder_embed = nn.Linear(vit.embed_dim, DECODER_DIM)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches,
            embed_dim=DECODER_DIM,
            depth=decoder_depth,
            num_heads=8,
            num_prefix_tokens=vit.num_prefix_tokens,
        )
        self.prediction_head = nn.Linear(DECODER_DIM, self.patch_size**2 * vit.patch_embed.proj.in_channels)
        self.prefix_tokens = vit.num_prefix_tokens

    def loss(self, views: list[torch.Tensor]) -> torch.Tensor:
        images = views[0]
        idx_keep, idx_mask = utils.random_token_mask(
            size=(len(images), self.sequence_length),
            mask_ratio=self.mask_ratio,
            device=images.device,
            mask_class_token=False,
        )
        encoded = self.encoder.encode(images=images, idx_keep=idx_keep)
        decoded = self.decoder_embed(encoded)
        full = decoded.new_zeros(len(images), self.sequence_length, decoded.shape[-1])
        full = utils.set_at_index(full, idx_keep, decoded.type_as(full))
        decoded = self.decoder(full, idx_mask=idx_mask)
        predictions = self.prediction_head(utils.get_at_index(decoded, idx_mask))
        patches = utils.patchify(images, self.patch_size)
        if self.norm_pix_loss:
            patches = utils.normalize_mean_var(patches)
        target = utils.get_at_index(patches, idx_mask - self.prefix_tokens)
        return F.mse_loss(predictions.float(), target.float())


register(
    MethodSpec(
        name="mae",
        needs_pretraining=True,
        description="MAE: masked autoencoder, mask ratio 0.75 (ViT backbones)",
        backbone_families=("vit",),
        views=1,
        view_preset="crop_flip",
        pretrain_defaults=ADAMW_PRETRAIN,
        build_pretext=lambda name, request, settings: MAE(
            build_backbone(name, request), settings.mask_ratio, norm_pix_loss=settings.norm_pix_loss
        ),
    )
)
