"""Networks: the papers' U-Net with feature taps, and projection heads."""

from segssl.models.unet import UNet, apply_freeze, build_model, decoder_names, encoder_names

__all__ = ["UNet", "apply_freeze", "build_model", "decoder_names", "encoder_names"]
