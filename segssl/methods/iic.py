"""IIC (Dec): invariant information clustering of the decoder's dense features (Ji et al. 2019).

The BIM objective reduced to plain mutual information: ``L_MI`` with ``alpha = 0`` (eq. 8 without
the pseudo-joint), no boundary loss, no contrastive term; same views, heads, K and protocol as
:mod:`segssl.methods.bim` (BIM App. E).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from segssl.config import MethodConfig
from segssl.methods.bim import BIM
from segssl.methods.bim import Config as BIMConfig


class Config(BIMConfig):
    """BIM's config with IIC defaults: alpha 0, only the MI term."""

    name: Literal["iic"] = "iic"  # type: ignore[assignment]
    alpha: float = Field(0.0, ge=0.0, le=1.0)
    w_con: float = Field(0.0, ge=0.0)
    w_cc: float = Field(0.0, ge=0.0)


class IIC(BIM):
    """Plain MI maximisation between the two views' dense cluster assignments."""

    Config: ClassVar[type[MethodConfig]] = Config
