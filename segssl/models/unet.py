"""The papers' 2D U-Net with named blocks and feature taps.

Encoder blocks ``Conv1..Conv5`` (two 3x3 conv + BN + ReLU each, max-pooling between them), decoder
blocks ``Up_conv5..Up_conv2`` (up-sampling conv, concatenation with the skip, two 3x3 convs) and a
final 1x1 convolution ``Conv_1x1``. ``forward(x, taps=("Conv5", "Up_conv2"))`` returns the logits
and a dict of the requested intermediate features, so methods never need forward hooks.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from segssl.config import ModelConfig

__all__ = ["UNet", "build_model", "encoder_names", "decoder_names"]


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
    logits ``(B, num_classes, H, W)``; tap ``Conv<i>`` is ``(B, base*2**(i-1), H/2**(i-1), ...)``.
    """

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
        self.Conv_1x1 = nn.Conv2d(self.widths[0], num_classes, 1)

    @property
    def feature_channels(self) -> dict[str, int]:
        """Channels of every tappable block, by name."""
        ch = dict(zip(encoder_names(self.depth), self.widths, strict=True))
        ch.update({f"Up_conv{lv}": self.widths[lv - 2] for lv in range(self.depth, 1, -1)})
        return ch

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
        """Logits, or ``(logits, {name: feature})`` when ``taps`` names blocks to return."""
        wanted = set(taps)
        unknown = wanted - set(self.feature_channels)
        if unknown:
            raise KeyError(
                f"unknown feature tap(s) {sorted(unknown)}; known: {list(self.feature_channels)}"
            )
        enc = self.encode(x)
        out = {n: f for n, f in zip(encoder_names(self.depth), enc, strict=True) if n in wanted}
        d = enc[-1]
        for level in range(self.depth, 1, -1):
            d = getattr(self, f"Up{level}")(d)
            d = getattr(self, f"Up_conv{level}")(torch.cat([enc[level - 2], d], dim=1))
            if f"Up_conv{level}" in wanted:
                out[f"Up_conv{level}"] = d
        logits = self.Conv_1x1(d)
        return (logits, out) if wanted else logits

    def decode_head(self, features: Tensor) -> Tensor:
        """Apply the final 1x1 conv to ``Up_conv2`` features (for T(s(x)) style pairs)."""
        return self.Conv_1x1(features)


def build_model(cfg: ModelConfig, num_classes: int) -> UNet:
    """Build the U-Net of ``cfg`` and freeze the parameters named by ``cfg.freeze`` prefixes."""
    model = UNet(cfg.in_channels, num_classes, cfg.base_width, cfg.depth, cfg.dropout)
    apply_freeze(model, cfg.freeze)
    return model


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
    return frozen
