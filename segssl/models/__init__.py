"""Networks: the papers' U-Net with feature taps, and projection heads."""

from segssl.models.heads import ClusterHeads, DenseProjector, GlobalProjector
from segssl.models.unet import UNet, apply_freeze, build_model, decoder_names, encoder_names

__all__ = [
    "ClusterHeads",
    "DenseProjector",
    "GlobalProjector",
    "UNet",
    "apply_freeze",
    "build_model",
    "decoder_names",
    "encoder_names",
]
