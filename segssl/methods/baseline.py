"""Baseline: supervised training on the labeled scans only, from random weights.

The papers' lower bound ("Baseline" rows of BIM Tables 2-6): pixel-wise cross-entropy on the
labeled slices. Registry variants: ``finetune`` (the same objective from ``train.init_from``, the
second stage of every pre-training method: BIM App. F) and ``full`` (every training label:
``data.labeled_scans`` pinned to 100 %, the upper bound).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from segssl.config import MethodConfig
from segssl.data.types import Batch
from segssl.methods.base import SUPERVISED_TERMS, Clock, Method, StepOutput, SupervisedConfig


class Config(SupervisedConfig):
    """Supervised objective: ``w_ce * CE + w_dice * Dice`` (the papers use CE alone)."""

    name: Literal["baseline"] = "baseline"

    # the baseline's keys have always held w_dice: it is part of them at every value (but not
    # dice_background, which came later: key-neutral at its default as for every method)
    key_neutral_defaults: ClassVar[frozenset[str]] = frozenset({"dice_background"})


class Baseline(Method):
    """Cross-entropy (optionally + Dice) on labeled batches."""

    Config: ClassVar[type[MethodConfig]] = Config
    uses_labeled = True
    init = "forbidden"
    terms = SUPERVISED_TERMS

    def training_step(self, labeled: Batch, unlabeled: None, clock: Clock) -> StepOutput:
        return self.output(self.supervised(self.model(labeled["image"]), labeled["label"]))
