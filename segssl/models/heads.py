"""Projection heads put on top of the U-Net's feature taps during pre-training.

* :class:`ClusterHeads` - ``n_heads`` linear cluster projectors ``g`` (1x1 conv + K-way softmax)
  on a dense feature map (BIM sec. 2.1, App. F: K = 40, 3 heads; GMI: 5 heads).
* :class:`GlobalProjector` - the global MLP projector of the contrastive losses (BIM App. E/F,
  Chaitanya g1): adaptive average pooling, Linear, LeakyReLU, Linear, L2 normalisation.
* :class:`DenseProjector` - the dense projector of Contrast(Dec) (BIM App. E, Chaitanya g2):
  adaptive average pooling to a ``grid x grid`` map (20 x 20), 1x1 conv, LeakyReLU, 1x1 conv,
  L2 normalisation over channels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClusterHeads", "DenseProjector", "GlobalProjector"]


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_input(x: Tensor, in_ch: int, owner: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_ch:
        raise ValueError(
            f"{owner} expects a (B, {in_ch}, H, W) feature map, got shape {tuple(x.shape)}"
        )


class ClusterHeads(nn.Module):
    """``n_heads`` independent cluster projectors: 1x1 conv to K channels, softmax over K.

    Args:
        in_ch: channels of the tapped feature map.
        k: number of clusters K (>= 2; 40 in the BIM paper).
        n_heads: number of sub-heads (3 in the BIM paper).

    Shapes:
        input ``(B, in_ch, H, W)`` -> list of ``n_heads`` tensors ``(B, K, H, W)``, each a
        softmax over K (values in [0, 1], summing to 1 over dim 1).
    """

    def __init__(self, in_ch: int, k: int = 40, n_heads: int = 3) -> None:
        super().__init__()
        _check_positive_int(in_ch, "in_ch")
        _check_positive_int(k, "K", minimum=2)
        _check_positive_int(n_heads, "n_heads")
        self.in_ch, self.k = in_ch, k
        self.heads = nn.ModuleList(nn.Conv2d(in_ch, k, kernel_size=1) for _ in range(n_heads))

    def logits(self, x: Tensor) -> list[Tensor]:
        """Pre-softmax scores of every head, ``(B, K, H, W)`` each."""
        _check_input(x, self.in_ch, "ClusterHeads")
        return [head(x) for head in self.heads]

    def forward(self, x: Tensor) -> list[Tensor]:
        """Cluster probabilities of every head (softmax over K)."""
        return [z.softmax(dim=1) for z in self.logits(x)]


class GlobalProjector(nn.Module):
    """Global contrastive projector: pool, Linear, LeakyReLU, Linear, L2 normalisation.

    Args:
        in_ch: channels of the encoder feature map (Conv5).
        hidden: width of the hidden layer (not stated in the BIM paper; 256 by default).
        out: dimension of the embedding ``z`` (128, as Chaitanya et al.'s g1).

    Shapes:
        input ``(B, in_ch, H, W)`` -> ``(B, out)`` with unit L2 norm per row.
    """

    def __init__(self, in_ch: int, hidden: int = 256, out: int = 128) -> None:
        super().__init__()
        for name, v in (("in_ch", in_ch), ("hidden", hidden), ("out", out)):
            _check_positive_int(v, name)
        self.in_ch = in_ch
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mlp = nn.Sequential(
            nn.Linear(in_ch, hidden), nn.LeakyReLU(inplace=True), nn.Linear(hidden, out)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Embed and L2-normalise."""
        _check_input(x, self.in_ch, "GlobalProjector")
        return F.normalize(self.mlp(self.pool(x).flatten(1)), dim=1)


class DenseProjector(nn.Module):
    """Dense contrastive projector: pool to ``grid x grid``, 1x1 conv, LeakyReLU, 1x1 conv, L2.

    Args:
        in_ch: channels of the decoder feature map (the layer before the last 1x1 conv).
        hidden: hidden channels (not stated in the BIM paper; 128 by default).
        out: embedding channels (128 by default).
        grid: side of the adaptive average pooling (20, BIM App. E).

    Shapes:
        input ``(B, in_ch, H, W)`` -> ``(B, out, grid, grid)``, unit L2 norm over channels.
    """

    def __init__(self, in_ch: int, hidden: int = 128, out: int = 128, grid: int = 20) -> None:
        super().__init__()
        for name, v in (("in_ch", in_ch), ("hidden", hidden), ("out", out), ("grid", grid)):
            _check_positive_int(v, name)
        self.in_ch = in_ch
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.mlp = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1), nn.LeakyReLU(inplace=True), nn.Conv2d(hidden, out, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Pool to the grid, project and L2-normalise every position."""
        _check_input(x, self.in_ch, "DenseProjector")
        return F.normalize(self.mlp(self.pool(x)), dim=1)
