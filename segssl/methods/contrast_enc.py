"""Contrast (Enc): the global contrastive term of Chaitanya et al. only (BIM App. E).

Slices of the same partition (meta-label) are positives for the pooled Conv5 features; only the
encoder is trained (the decoder is not in the graph; ``experiments/contrast_enc.yaml`` also
freezes it by config). Implementation: :mod:`segssl.methods.contrast_enc_dec` with ``w_dec=0``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.methods.contrast_enc_dec import Config as EncDecConfig
from segssl.methods.contrast_enc_dec import ContrastEncDec


class Config(EncDecConfig):
    """Only the global term."""

    name: Literal["contrast_enc"] = "contrast_enc"  # type: ignore[assignment]
    w_dec: float = Field(0.0, ge=0.0)


class ContrastEnc(ContrastEncDec):
    """Global contrastive pre-training of the encoder."""

    Config: ClassVar[type[MethodConfig]] = Config
