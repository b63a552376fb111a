"""Fine-tuning: supervised training of the whole network from a pre-trained checkpoint.

The second stage of every pre-training method (BIM Appendix F: lr 1e-7 x 200 warm-up, 50 epochs
on ACDC): the engine loads ``train.init_from`` (required) into the U-Net, then this method
minimises the same supervised objective as the baseline on the labeled scans.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from segssl.config import MethodConfig
from segssl.methods.baseline import Baseline
from segssl.methods.baseline import Config as BaselineConfig


class Config(BaselineConfig):
    """Same objective as the baseline."""

    name: Literal["finetune"] = "finetune"  # type: ignore[assignment]


class Finetune(Baseline):
    """Baseline objective, starting from ``train.init_from``."""

    Config: ClassVar[type[MethodConfig]] = Config
    init = "required"
