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

from typing import Any

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
]
