"""The papers' 2D U-Net with named blocks and feature taps named by role.

Encoder blocks ``Conv1..Conv5`` (two 3x3 conv + BN + ReLU each, max-pooling between them), decoder
blocks ``Up_conv5..Up_conv2`` (up-sampling conv, concatenation with the skip, two 3x3 convs) and a
final 1x1 convolution ``Conv_1x1``.

Tap roles (what methods ask for; they never see block names): ``encoder`` is the encoder's
output (``Conv5``), ``encoder1..encoder5`` the encoder blocks ``Conv1..Conv5``, ``decoder1..4``
the decoder blocks from the deepest: ``decoder1 = Up_conv5`` ... ``decoder4 = Up_conv2`` (the
GMI paper's Up_conv5..Up_conv2; Chaitanya's "first l decoder blocks" are ``decoder1..l``).
``forward(x, taps=("encoder", "decoder4"))`` returns the logits and the requested features.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from segssl.config import ModelConfig
from segssl.models.ops import Conv1x1

__all__ = ["Config", "UNet", "apply_freeze", "decoder_names", "encoder_names"]


class Config(ModelConfig):
    """The papers' U-Net: ``base_width`` channels in Conv1, doubled per block (16 -> 256)."""

    name: Literal["unet"] = "unet"
    in_channels: int = Field(1, ge=1)
    base_width: int = Field(16, ge=2)
    depth: int = Field(5, ge=2, le=6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # after each decoder block (MC dropout)

    @property
    def input_multiple(self) -> int:
        return 2 ** (self.depth - 1)


class ConvBlock(nn.Sequential):
    """Two (3x3 conv, batch norm, ReLU) layers, optional dropout at the end."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class UpConv(nn.Sequential):
    """Nearest up-sampling by 2 then (3x3 conv, batch norm, ReLU)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def encoder_names(depth: int = 5) -> list[str]:
    """``["Conv1", ..., "Conv<depth>"]``."""
    return [f"Conv{i}" for i in range(1, depth + 1)]


def decoder_names(depth: int = 5) -> list[str]:
    """``["Up_conv<depth>", ..., "Up_conv2"]`` (deepest first)."""
    return [f"Up_conv{i}" for i in range(depth, 1, -1)]


class UNet(nn.Module):
    """U-Net with ``depth`` levels; channels ``base_width * 2**i`` at level ``i``.

    Args:
        in_channels: image channels.
        num_classes: output channels of ``Conv_1x1`` (logits).
        base_width: channels of ``Conv1``.
        depth: number of encoder blocks (5 in the papers).
        dropout: dropout after each decoder block (used by UA-MT's MC sampling).

    Shapes: ``x: (B, C_in, H, W)`` with H, W divisible by ``2**(depth-1)``;
    logits ``(B, num_classes, H, W)``; tap ``encoder<i>`` (``Conv<i>``) is
    ``(B, base*2**(i-1), H/2**(i-1), W/2**(i-1))``.
    """

    Config: ClassVar[type[ModelConfig]] = Config

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        base_width: int = 16,
        depth: int = 5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = [base_width * 2**i for i in range(depth)]
        self.pool = nn.MaxPool2d(2)
        cin = in_channels
        for name, w in zip(encoder_names(depth), self.widths, strict=True):
            self.add_module(name, ConvBlock(cin, w))
            cin = w
        for level in range(depth, 1, -1):
            wi, wo = self.widths[level - 1], self.widths[level - 2]
            self.add_module(f"Up{level}", UpConv(wi, wo))
            self.add_module(f"Up_conv{level}", ConvBlock(2 * wo, wo, dropout))
        self.Conv_1x1 = Conv1x1(self.widths[0], num_classes)  # nn.Conv2d, a matmul on CPU

    @property
    def tap_blocks(self) -> dict[str, str]:
        """Tap role -> block name (see the module docstring)."""
        enc = encoder_names(self.depth)
        roles = {"encoder": enc[-1], **{f"encoder{i}": n for i, n in enumerate(enc, 1)}}
        roles.update({f"decoder{i}": n for i, n in enumerate(decoder_names(self.depth), 1)})
        return roles

    @property
    def tap_channels(self) -> dict[str, int]:
        """Channels of every tap role."""
        ch = dict(zip(encoder_names(self.depth), self.widths, strict=True))
        ch.update({f"Up_conv{lv}": self.widths[lv - 2] for lv in range(self.depth, 1, -1)})
        return {role: ch[block] for role, block in self.tap_blocks.items()}

    @property
    def parts(self) -> dict[str, tuple[str, ...]]:
        """Named parts (for ``carry`` and partial loading) -> parameter-name prefixes."""
        dec = tuple(n for lv in range(self.depth, 1, -1) for n in (f"Up{lv}", f"Up_conv{lv}"))
        blocks = {
            f"decoder{i}": (f"Up{lv}", f"Up_conv{lv}")
            for i, lv in enumerate(range(self.depth, 1, -1), start=1)
        }
        return {
            "encoder": tuple(encoder_names(self.depth)),
            "decoder": dec,
            **blocks,
            "head": ("Conv_1x1",),
        }

    def _check_taps(self, taps: Iterable[str]) -> dict[str, str]:
        roles = self.tap_blocks
        unknown = [t for t in taps if t not in roles]
        if unknown:
            raise KeyError(
                f"unknown feature tap role(s) {unknown} for model 'unet' (depth {self.depth}); "
                f"valid roles: {list(roles)}"
            )
        return {t: roles[t] for t in taps}

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features ``[Conv1, ..., Conv<depth>]``."""
        feats = []
        for i, name in enumerate(encoder_names(self.depth)):
            if i:
                x = self.pool(x)
            x = getattr(self, name)(x)
            feats.append(x)
        return feats

    def forward(
        self, x: Tensor, taps: Iterable[str] = ()
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits, or ``(logits, {role: feature})`` when ``taps`` names tap roles to return."""
        wanted = self._check_taps(taps)
        if not wanted:
            return self._decode(self.encode(x), {})[0]
        return self._decode(self.encode(x), wanted)

    def features(self, x: Tensor, taps: Iterable[str]) -> dict[str, Tensor]:
        """``{role: feature}`` only; encoder roles alone skip the decoder (not in the graph)."""
        wanted = self._check_taps(taps)
        enc = self.encode(x)
        if all(r.startswith("encoder") for r in wanted):
            by_block = dict(zip(encoder_names(self.depth), enc, strict=True))
            return {r: by_block[b] for r, b in wanted.items()}
        return self._decode(enc, wanted, stop=True)[1]

    def _decode(
        self, enc: list[Tensor], wanted: dict[str, str], stop: bool = False
    ) -> tuple[Tensor | None, dict]:
        """Logits and the wanted features; ``stop``: return (no logits) as soon as every wanted
        block ran, so later blocks are neither computed nor updated (BatchNorm statistics)."""
        blocks = {b: r for r, b in wanted.items()}
        out = {
            r: f
            for n, f in zip(encoder_names(self.depth), enc, strict=True)
            for r, b in wanted.items()
            if b == n
        }
        d = enc[-1]
        for level in range(self.depth, 1, -1):
            d = getattr(self, f"Up{level}")(d)
            d = getattr(self, f"Up_conv{level}")(torch.cat([enc[level - 2], d], dim=1))
            if f"Up_conv{level}" in blocks:
                out[blocks[f"Up_conv{level}"]] = d
                if stop and len(out) == len(wanted):
                    return None, out
        return self.Conv_1x1(d), out

    def decode_head(self, features: Tensor) -> Tensor:
        """Apply the final 1x1 conv to the last decoder block's features (T(s(x)) style pairs)."""
        return self.Conv_1x1(features)

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> UNet:
        """The U-Net of ``cfg`` (the model registry's constructor)."""
        return cls(cfg.in_channels, num_classes, cfg.base_width, cfg.depth, cfg.dropout)


def apply_freeze(model: nn.Module, prefixes: Iterable[str]) -> list[str]:
    """Set ``requires_grad=False`` on parameters whose name starts with a prefix; return them.

    Raises:
        ValueError: a prefix matches no parameter (a typo would otherwise train everything).
    """
    prefixes = tuple(prefixes)
    frozen = []
    for p in prefixes:
        hits = [n for n, _ in model.named_parameters() if n == p or n.startswith(p + ".")]
        if not hits:
            names = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
            raise ValueError(f"model.freeze: {p!r} matches no parameter; blocks are {names}")
        frozen += hits
    for n, param in model.named_parameters():
        if n in frozen:
            param.requires_grad_(False)
    model.frozen_prefixes = prefixes  # Method.train keeps these blocks' BatchNorms in eval
    return frozen
