"""Contrast (Dec): the local (dense) contrastive term of Chaitanya et al. only (BIM App. E).

Positives are the same position of the 20x20 projected Up_conv2 grid under two intensity
transforms, negatives far positions; everything but ``Conv_1x1`` is trained (not in the graph;
``experiments/contrast_dec.yaml`` freezes it by config). Implementation:
:mod:`segssl.methods.contrast_enc_dec` with ``w_enc=0``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.methods.contrast_enc_dec import Config as EncDecConfig
from segssl.methods.contrast_enc_dec import ContrastEncDec


class Config(EncDecConfig):
    """Only the local term."""

    name: Literal["contrast_dec"] = "contrast_dec"  # type: ignore[assignment]
    w_enc: float = Field(0.0, ge=0.0)


class ContrastDec(ContrastEncDec):
    """Dense contrastive pre-training of the network except the last 1x1 convolution."""

    Config: ClassVar[type[MethodConfig]] = Config
