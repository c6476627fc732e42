"""Training methods, one small module each, all registered in :data:`METHODS`.

``supervised`` is the reference model (trained with labels from scratch); every other method
pretrains a backbone without labels, then the fine-tune stage trains it with labels.
"""

from ssl_hpc.models.methods.registry import METHODS, MethodSpec, register

register(
    MethodSpec(
        name="supervised",
        needs_pretraining=False,
        fixed_finetune="end_to_end",
        description="ResNet (or any backbone) trained from scratch with labels: the thesis's reference model",
    )
)

register(
    MethodSpec(
        name="imagenet",
        needs_pretraining=False,
        description="transfer learning: the backbone starts from ImageNet weights (timm), a new head is trained",
        model_defaults={"pretrained_weights": "imagenet"},
    )
)
register(
    MethodSpec(
        name="random_init",
        needs_pretraining=False,
        description="a randomly initialised backbone, fine-tuned like a pretrained one: the floor any pretraining "
        "must beat (frozen = a probe on random features)",
    )
)

from ssl_hpc.models.methods import aim, barlowtwins, byol, dino, mae, mocov2, rotnet, simclr  # noqa: E402,F401

__all__ = ["METHODS", "MethodSpec", "register"]
