"""Method registry: the one explicit mapping from ``method.name`` to its implementation.

Adding a method: its file under ``segssl/methods/``, one line in ``REGISTRY``, an example YAML under
``experiments/`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

from typing import Any

from segssl.config import MethodConfig, did_you_mean
from segssl.methods.baseline import Baseline
from segssl.methods.bim import BIM
from segssl.methods.contrast_dec import ContrastDec
from segssl.methods.contrast_enc import ContrastEnc
from segssl.methods.contrast_enc_dec import ContrastEncDec
from segssl.methods.finetune import Finetune
from segssl.methods.full import Full
from segssl.methods.iic import IIC
from segssl.methods.imsat import IMSAT


class UnknownMethodError(KeyError, ValueError):
    """An unknown method name; a ValueError too, so pydantic reports it at ``method``."""

    def __str__(self) -> str:
        return str(self.args[0])


# name -> method class; each class has a ``Config`` attribute (a MethodConfig subclass)
REGISTRY: dict[str, Any] = {
    "baseline": Baseline,
    "full": Full,
    "finetune": Finetune,
    "bim": BIM,
    "iic": IIC,
    "imsat": IMSAT,
    "contrast_enc": ContrastEnc,
    "contrast_dec": ContrastDec,
    "contrast_enc_dec": ContrastEncDec,
}


def get_method(name: str) -> Any:
    """Return the method class registered as ``name``.

    Raises:
        UnknownMethodError: unknown name, with the known names and a "did you mean".
    """
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise UnknownMethodError(
            f"unknown method {name!r}{did_you_mean(name, REGISTRY)}; known methods: {known}"
        ) from None


def method_config_class(name: str) -> type[MethodConfig]:
    """The config class of method ``name`` (used by ``segssl.config`` to validate YAML)."""
    return get_method(name).Config


__all__ = ["REGISTRY", "UnknownMethodError", "get_method", "method_config_class"]
