"""Method registry: the one explicit mapping from ``method.name`` to its implementation.

Adding a method: its file under ``segssl/methods/``, one line in ``REGISTRY``, an example YAML under
``experiments/`` (see CONTRIBUTING.md). A method that only changes another's defaults is one line
here: ``variant(Parent, "name", field=default, ...)``.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import create_model

from segssl.config import MethodConfig, did_you_mean
from segssl.methods.adversarial import Adversarial
from segssl.methods.base import Method
from segssl.methods.baseline import Baseline
from segssl.methods.bim import BIM
from segssl.methods.consistency import Consistency
from segssl.methods.context_restoration import ContextRestoration
from segssl.methods.contrast_enc_dec import ContrastEncDec
from segssl.methods.contrast_global import ContrastGlobal
from segssl.methods.contrast_joint import ContrastJoint
from segssl.methods.contrast_local import ContrastLocal
from segssl.methods.entmin import EntMin
from segssl.methods.gmi import GMI
from segssl.methods.ict import ICT
from segssl.methods.ideal_finetune import IdealFinetune
from segssl.methods.ideal_pretrain import IdealPretrain
from segssl.methods.imsat import IMSAT
from segssl.methods.inpainting import Inpainting
from segssl.methods.mean_teacher import MeanTeacher
from segssl.methods.mixup import MixUp
from segssl.methods.rotation import Rotation
from segssl.methods.self_training import SelfTraining
from segssl.methods.uamt import UAMT

_CLASS_ATTRS = ("init", "pinned", "uses_labeled", "uses_unlabeled", "predict_with", "carry")


class UnknownMethodError(KeyError, ValueError):
    """An unknown method name; a ValueError too, so pydantic reports it at ``method``."""

    def __str__(self) -> str:
        return str(self.args[0])


def variant(parent: type[Method], name: str, doc: str = "", **changes: Any) -> type[Method]:
    """``parent`` registered under ``name`` with other config defaults (``field=value``) and/or
    class attributes (``init``, ``pinned``, ...): one registry line, no file.

    Raises:
        ValueError: a change names neither a config field of ``parent`` nor a class attribute.
    """
    attrs = {k: changes.pop(k) for k in list(changes) if k in _CLASS_ATTRS}
    fields: dict[str, Any] = {"name": (Literal[name], name)}
    for key, value in changes.items():
        if key not in parent.Config.model_fields:
            raise ValueError(f"variant {name!r}: {parent.__name__} has no setting {key!r}")
        info = copy.copy(parent.Config.model_fields[key])
        info.default = value
        fields[key] = (info.annotation, info)
    config = create_model(f"{parent.__name__}_{name}_Config", __base__=parent.Config, **fields)
    config.__doc__ = f"{parent.Config.__doc__} Variant {name!r}: {changes or attrs}."
    cls = type(f"{parent.__name__}_{name}", (parent,), {"Config": config, **attrs})
    cls.__doc__ = doc or f"{parent.__name__} with {changes or attrs}"
    # importable by name from this module, so that pickle (and Ray's cloudpickle, which ships a
    # trial's RunConfig to its worker) refers to these classes instead of copying them: a copy is
    # another class, and the method's isinstance check of its config would fail in the worker
    for made in (config, cls):
        made.__module__ = __name__
        made.__qualname__ = made.__name__
        globals()[made.__name__] = made
    return cls


# name -> method class; each class has a ``Config`` whose ``name`` equals the key
REGISTRY: dict[str, type[Method]] = {
    "baseline": Baseline,
    "full": variant(
        Baseline,
        "full",
        "The baseline on every training scan: the fully supervised upper bound.",
        pinned={"data.labeled_scans": "100%"},
    ),
    "finetune": variant(
        Baseline,
        "finetune",
        "The baseline started from a pre-trained checkpoint (train.init_from).",
        init="required",
    ),
    "bim": BIM,
    "iic": variant(
        BIM,
        "iic",
        "Dense IIC pre-training: bim with L_MI alone (alpha, w_con and w_cc set to 0).",
        alpha=0.0,
        w_con=0.0,
        w_cc=0.0,
    ),
    "imsat": IMSAT,
    "contrast_enc": variant(
        ContrastEncDec,
        "contrast_enc",
        "Global (encoder) contrastive pre-training alone.",
        w_dec=0.0,
    ),
    "contrast_dec": variant(
        ContrastEncDec,
        "contrast_dec",
        "Local (decoder) contrastive pre-training alone.",
        w_enc=0.0,
    ),
    "contrast_enc_dec": ContrastEncDec,
    "contrast_global": ContrastGlobal,
    "contrast_local": ContrastLocal,
    "contrast_joint": ContrastJoint,
    "rotation": Rotation,
    "inpainting": Inpainting,
    "context_restoration": ContextRestoration,
    "self_training": SelfTraining,
    "ideal_pretrain": IdealPretrain,
    "ideal_finetune": IdealFinetune,
    "entmin": EntMin,
    "mean_teacher": MeanTeacher,
    "mixup": MixUp,
    "consistency": Consistency,
    "uamt": UAMT,
    "ict": ICT,
    "adversarial": Adversarial,
    "gmi": GMI,
    "gmi_pretrain": variant(
        GMI,
        "gmi_pretrain",
        "GMI's unsupervised terms alone, as pre-training (no labeled batches, w_ce 0).",
        uses_labeled=False,
        w_ce=0.0,
    ),
}


def describe(cls: type[Method]) -> str:
    """A method's one-line description: the first line of its class docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0].strip()


def check_registry(registry: dict[str, type[Method]]) -> None:
    """Every key equals its config's ``name`` default (one source of a method's name)."""
    for key, cls in registry.items():
        got = cls.Config.model_fields["name"].default
        if got != key:
            raise ValueError(f"registry key {key!r} maps to a Config named {got!r}")


check_registry(REGISTRY)


def get_method(name: str) -> type[Method]:
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


__all__ = [
    "REGISTRY",
    "UnknownMethodError",
    "check_registry",
    "describe",
    "get_method",
    "method_config_class",
    "variant",
]
