"""ResNet-50 encoder U-Net (IDEAL's backbone), written without torchvision.

Encoder (He et al., 2016): a 7x7 stride-2 stem convolution with batch norm and ReLU, 3x3 stride-2
max pooling, then four stages of bottleneck blocks (1x1 reduce, 3x3, 1x1 expand x4, identity or
projection shortcut), ``(3, 4, 6, 3)`` blocks for ResNet-50, widths ``w, 2w, 4w, 8w`` (``w = 64``)
with outputs ``4w .. 32w`` channels at strides 4, 8, 16, 32 (``w`` scales the whole network, a
small ``w`` keeps tests fast). Taps: ``stem`` (stride 2), ``layer1`` .. ``layer4``.

Decoder: four up-sampling blocks (IDEAL: "a U-Net decoder with 4 upscaling layers") from stride
32 to stride 2, each up-sampling by 2, concatenating the encoder skip of that resolution and
applying two (3x3 conv, batch norm, ReLU); a 1x1 convolution gives the logits at stride 2, which
are bilinearly up-sampled to the input size. Up-sampling is a design choice of each decoder
(IDEAL's two decoders differ exactly there):

* ``transpose``: a 2x2 stride-2 transposed convolution (trainable kernel) + batch norm + ReLU;
* ``bilinear``: bilinear interpolation, then a 3x3 convolution + batch norm + ReLU.

A model may carry several decoders sharing the encoder (``decoders=("transpose", "bilinear")``):
``decoders.0`` gives ``forward``'s logits, :meth:`ResNetUNet.decode` runs any of them.

Registered as ``resnet50_unet`` (``model.name``). Tap roles, as the U-Net's: ``encoder`` (the
encoder output, ``layer4``), ``encoder1`` .. ``encoder5`` (``stem``, ``layer1`` .. ``layer4``),
``decoder1`` (deepest) .. ``decoder4``, blocks of decoder 0. Parts (for ``carry`` and partial
loading): ``encoder``, ``decoder`` (every decoder), ``decoder1`` .. ``decoder4`` (block i of
decoder 0), ``head`` (decoder 0's logits convolution).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from segssl.config import ModelConfig
from segssl.models.ops import Conv1x1

__all__ = ["Bottleneck", "Config", "ResNetEncoder", "ResNetUNet", "UNetDecoder", "RESNET50_BLOCKS"]

RESNET50_BLOCKS: tuple[int, int, int, int] = (3, 4, 6, 3)
UpKind = Literal["transpose", "bilinear"]


class Config(ModelConfig):
    """ResNet-50 encoder U-Net: ``base_width`` is the stem width ``w`` (64 for ResNet-50; every
    width scales with it), ``decoders`` the up-sampling of each decoder sharing the encoder."""

    name: Literal["resnet50_unet"] = "resnet50_unet"
    in_channels: int = Field(1, ge=1)
    base_width: int = Field(64, ge=1)
    blocks: tuple[int, int, int, int] = RESNET50_BLOCKS
    decoders: tuple[UpKind, ...] = ("transpose",)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # after each decoder block

    @field_validator("blocks")
    @classmethod
    def _blocks(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if min(v) < 1:
            raise ValueError(f"every stage needs at least one block, got {v}")
        return v

    @field_validator("decoders")
    @classmethod
    def _decoders(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("at least one decoder is needed")
        return v

    @property
    def input_multiple(self) -> int:
        return 32


def _bn_relu_conv(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 (width), 3x3 (width, stride), 1x1 (4 x width), shortcut, ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            *_bn_relu_conv(cin, width, 1),
            *_bn_relu_conv(width, width, 3, stride),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetEncoder(nn.Module):
    """Stem + four bottleneck stages; :meth:`forward` returns the five feature maps.

    Args:
        in_channels: image channels.
        width: ``w``, channels of the stem (64 for ResNet-50).
        blocks: bottleneck blocks per stage (``(3, 4, 6, 3)`` for ResNet-50).
    """

    names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, in_channels: int = 1, width: int = 64, blocks: Sequence[int] = RESNET50_BLOCKS
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts (ResNet-50: 3,4,6,3), got {blocks}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stem = nn.Sequential(*_bn_relu_conv(in_channels, width, 7, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = width
        self.channels = [width]
        for i, n in enumerate(blocks):
            w = width * 2**i
            layers = [Bottleneck(cin if j == 0 else w * 4, w, 2 if i and j == 0 else 1)
                      for j in range(n)]  # fmt: skip
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
            cin = w * 4
            self.channels.append(cin)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[stem (stride 2), layer1 (4), layer2 (8), layer3 (16), layer4 (32)]``."""
        feats = [self.stem(x)]
        y = self.pool(feats[0])
        for i in range(1, 5):
            y = getattr(self, f"layer{i}")(y)
            feats.append(y)
        return feats


class _Up(nn.Sequential):
    """Up-sampling by 2 with ``cin -> cout`` channels: transposed conv or bilinear + conv."""

    def __init__(self, kind: UpKind, cin: int, cout: int) -> None:
        if kind == "transpose":
            layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)]
        elif kind == "bilinear":
            layers = [
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            ]
        else:
            raise ValueError(f"decoder up-sampling must be 'transpose' or 'bilinear', got {kind!r}")
        super().__init__(*layers, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """Four (up-sample, concatenate skip, two 3x3 conv) blocks and a 1x1 logits conv.

    Args:
        kind: ``transpose`` or ``bilinear`` up-sampling.
        enc_channels: channels of ``[stem, layer1, layer2, layer3, layer4]``.
        widths: output channels of blocks ``dec1`` .. ``dec4``.
        num_classes: logits channels.
        dropout: dropout after each block.
    """

    def __init__(
        self,
        kind: UpKind,
        enc_channels: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"a decoder has 4 blocks, got widths {tuple(widths)}")
        self.kind = kind
        cin = enc_channels[4]
        for i, (w, skip) in enumerate(zip(widths, enc_channels[3::-1], strict=True), start=1):
            self.add_module(f"up{i}", _Up(kind, cin, w))
            convs = _bn_relu_conv(w + skip, w, 3) + _bn_relu_conv(w, w, 3)
            if dropout > 0:
                convs.append(nn.Dropout2d(dropout))
            self.add_module(f"dec{i}", nn.Sequential(*convs))
            cin = w
        self.head = Conv1x1(cin, num_classes)  # nn.Conv2d, a matmul on CPU

    def forward(
        self, feats: Sequence[Tensor], size: tuple[int, int], taps: set[str] = frozenset()
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits at ``size`` and the requested ``dec<i>`` features."""
        out: dict[str, Tensor] = {}
        d = feats[4]
        for i in range(1, 5):
            d = getattr(self, f"up{i}")(d)
            d = getattr(self, f"dec{i}")(torch.cat([feats[4 - i], d], dim=1))
            if f"dec{i}" in taps:
                out[f"dec{i}"] = d
        logits = F.interpolate(self.head(d), size=size, mode="bilinear", align_corners=False)
        return logits, out


class ResNetUNet(nn.Module):
    """ResNet encoder U-Net with one or more decoders sharing the encoder (``resnet50_unet``).

    Args:
        in_channels: image channels.
        num_classes: logits channels.
        width: encoder stem width ``w`` (64: ResNet-50); decoder widths scale with it.
        blocks: bottleneck blocks per stage (``(3, 4, 6, 3)``: ResNet-50).
        decoders: up-sampling kind of each decoder (``("transpose", "bilinear")`` for IDEAL).
        dropout: dropout after each decoder block.

    Shapes: ``x: (B, C_in, H, W)`` with H, W divisible by 32; logits ``(B, num_classes, H, W)``.
    """

    Config: ClassVar[type[ModelConfig]] = Config

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        width: int = 64,
        blocks: Sequence[int] = RESNET50_BLOCKS,
        decoders: Sequence[UpKind] = ("transpose",),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not decoders:
            raise ValueError("at least one decoder is needed")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = ResNetEncoder(in_channels, width, blocks)
        widths = [max(1, width * f // 64) for f in (256, 128, 64, 32)]
        self.decoders = nn.ModuleList(
            UNetDecoder(kind, self.encoder.channels, widths, num_classes, dropout)
            for kind in decoders
        )
        self._blocks = {"encoder": "layer4"}
        self._blocks.update({f"encoder{i}": n for i, n in enumerate(ResNetEncoder.names, 1)})
        self._blocks.update({f"decoder{i}": f"dec{i}" for i in range(1, 5)})
        ch = dict(zip(ResNetEncoder.names, self.encoder.channels, strict=True))
        ch.update({f"dec{i}": w for i, w in enumerate(widths, start=1)})
        self._channels = {role: ch[block] for role, block in self._blocks.items()}

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> ResNetUNet:
        """The network of ``cfg`` (the model registry's constructor)."""
        return cls(
            cfg.in_channels, num_classes, cfg.base_width, cfg.blocks, cfg.decoders, cfg.dropout
        )

    @property
    def tap_channels(self) -> dict[str, int]:
        """Channels of every tap role (see the module docstring)."""
        return dict(self._channels)

    @property
    def parts(self) -> dict[str, tuple[str, ...]]:
        """Named parts -> parameter-name prefixes (for ``carry`` and partial loading)."""
        out: dict[str, tuple[str, ...]] = {"encoder": ("encoder",), "decoder": ("decoders",)}
        for i in range(1, 5):
            out[f"decoder{i}"] = (f"decoders.0.up{i}", f"decoders.0.dec{i}")
        out["head"] = ("decoders.0.head",)
        return out

    def _check_taps(self, taps: Iterable[str]) -> dict[str, str]:
        unknown = [t for t in taps if t not in self._blocks]
        if unknown:
            raise KeyError(
                f"unknown feature tap role(s) {unknown} for model 'resnet50_unet'; valid roles: "
                f"{list(self._blocks)}"
            )
        return {t: self._blocks[t] for t in taps}

    def encode(self, x: Tensor) -> list[Tensor]:
        """Encoder features ``[stem, layer1, layer2, layer3, layer4]``."""
        return self.encoder(x)

    def decode(self, feats: Sequence[Tensor], size: tuple[int, int], index: int = 0) -> Tensor:
        """Logits of decoder ``index`` from encoder features."""
        return self.decoders[index](feats, size)[0]

    def features(self, x: Tensor, taps: Iterable[str]) -> dict[str, Tensor]:
        """``{role: feature}``; encoder roles alone skip the decoder."""
        wanted = self._check_taps(taps)
        feats = self.encode(x)
        by_block = dict(zip(ResNetEncoder.names, feats, strict=True))
        out = {r: by_block[b] for r, b in wanted.items() if b in by_block}
        dec = {b: r for r, b in wanted.items() if b not in by_block}
        if dec:
            got = self.decoders[0](feats, (x.shape[2], x.shape[3]), set(dec))[1]
            out.update({dec[b]: f for b, f in got.items()})
        return out

    def forward(
        self, x: Tensor, taps: Iterable[str] = ()
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Logits of decoder 0, or ``(logits, {role: feature})`` when ``taps`` names roles."""
        wanted = self._check_taps(taps)
        feats = self.encode(x)
        blocks = {b: r for r, b in wanted.items()}
        logits, got = self.decoders[0](feats, (x.shape[2], x.shape[3]), set(blocks))
        if not wanted:
            return logits
        by_block = dict(zip(ResNetEncoder.names, feats, strict=True))
        out = {r: by_block[b] for r, b in wanted.items() if b in by_block}
        out.update({blocks[b]: f for b, f in got.items()})
        return logits, out
