"""Networks: the model registry (``model.name``), the papers' U-Net, projection heads.

A registered architecture is an ``nn.Module`` class with ``from_config(cfg, num_classes)``, a
``Config`` (a :class:`segssl.config.ModelConfig` subclass whose ``name`` equals the registry key)
and this interface, which methods rely on instead of block names:

* ``forward(x, taps=()) -> logits | (logits, {role: feature})`` and ``features(x, taps)``
  (only as far as the requested roles need);
* ``tap_channels: dict[str, int]``: every tap role the architecture offers and its channels
  (validated per architecture: an unknown role is an error listing the valid ones);
* ``parts: dict[str, tuple[str, ...]]``: named parts (``encoder``, ``decoder``, ``head``, ...) as
  parameter-name prefixes (a method may carry only a part to the next stage).

Roles and parts are per architecture: a ResNet-50-encoder U-Net names its own encoder stages
(e.g. ``encoder1..encoder5`` for the stem and the four residual stages, ``encoder`` the last),
a two-decoder network adds a second decoder's roles and part (e.g. ``aux_decoder1..``,
``aux_decoder``) and whatever extra output its methods call; ``model.freeze`` and ``carry``
work on any of them unchanged.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import torch
from torch import nn

from segssl.config import ModelConfig, did_you_mean
from segssl.models.heads import ClusterHeads, DenseProjector, GlobalProjector
from segssl.models.resnet_unet import ResNetUNet
from segssl.models.unet import UNet, apply_freeze, decoder_names, encoder_names

# name -> architecture class (with ``Config`` and ``from_config``)
MODELS: dict[str, Any] = {
    "unet": UNet,
    "resnet50_unet": ResNetUNet,
}


def get_model_class(name: str) -> Any:
    """The architecture registered as ``name``; unknown names list the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}{did_you_mean(name, MODELS)}; known models: "
            f"{', '.join(sorted(MODELS))}"
        ) from None


def model_config_class(name: str) -> type[ModelConfig]:
    """The config class of architecture ``name`` (used by ``segssl.config``)."""
    return get_model_class(name).Config


@functools.lru_cache(maxsize=64)
def _meta_model(model_json: str) -> nn.Module:
    cfg = model_config_class(json.loads(model_json)["name"]).model_validate_json(model_json)
    with torch.device("meta"):  # shapes only: no memory, no computation
        return get_model_class(cfg.name).from_config(cfg, 2).eval()


def tap_roles(cfg: ModelConfig) -> tuple[str, ...]:
    """The tap roles the architecture of ``cfg`` offers (without building it for real)."""
    return tuple(_meta_model(cfg.model_dump_json()).tap_channels)


@functools.lru_cache(maxsize=64)
def _tap_shapes(model_json: str, roles: tuple[str, ...], size: tuple[int, int]) -> tuple:
    model = _meta_model(model_json)
    channels = json.loads(model_json).get("in_channels", 1)
    with torch.device("meta"):
        feats = model.features(torch.zeros(1, channels, *size), list(roles))
    return tuple((r, tuple(feats[r].shape[-2:])) for r in roles)


def tap_shapes(cfg: ModelConfig, roles: tuple[str, ...], size: tuple[int, int]) -> dict:
    """``{role: (h, w)}``: the spatial size of each tap role's feature map for an input of
    ``size`` (computed on the meta device, so checks before any work are cheap).

    Raises:
        KeyError | ValueError: a role the architecture does not offer (as its ``features``
            raises it; the message lists the valid ones).
    """
    return dict(_tap_shapes(cfg.model_dump_json(), tuple(roles), tuple(size)))


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """Build the network of ``cfg`` and freeze the parameters named by ``cfg.freeze`` prefixes."""
    model = get_model_class(cfg.name).from_config(cfg, num_classes)
    apply_freeze(model, cfg.freeze)
    return model


__all__ = [
    "MODELS",
    "ClusterHeads",
    "DenseProjector",
    "GlobalProjector",
    "ResNetUNet",
    "UNet",
    "apply_freeze",
    "build_model",
    "decoder_names",
    "encoder_names",
    "get_model_class",
    "model_config_class",
    "tap_roles",
    "tap_shapes",
]
