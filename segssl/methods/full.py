"""Full supervision: the baseline trained on every labeled training scan (upper bound).

Nothing differs from :mod:`segssl.methods.baseline` but the data: ``pinned`` sets
``data.labeled_scans`` to ``100%`` when the run config is validated, so the resolved config (and
its hash) says what was run.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from segssl.config import MethodConfig
from segssl.methods.baseline import Baseline
from segssl.methods.baseline import Config as BaselineConfig


class Config(BaselineConfig):
    """Same objective as the baseline."""

    name: Literal["full"] = "full"  # type: ignore[assignment]


class Full(Baseline):
    """Baseline on all training labels."""

    Config: ClassVar[type[MethodConfig]] = Config
    pinned: ClassVar[dict[str, Any]] = {"data.labeled_scans": "100%"}
