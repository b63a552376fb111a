"""Projection heads put on top of the U-Net's feature taps during pre-training.

* :class:`ClusterHeads` - ``n_heads`` linear cluster projectors ``g`` (1x1 conv + K-way softmax)
  on a dense feature map (BIM sec. 2.1, App. F: K = 40, 3 heads; GMI: 5 heads).
* :class:`GlobalProjector` - the global MLP projector of the contrastive losses (BIM App. E/F,
  Chaitanya g1): adaptive average pooling, Linear, LeakyReLU, Linear, L2 normalisation.
* :class:`DenseProjector` - the dense projector of Contrast(Dec) (BIM App. E, Chaitanya g2):
  adaptive average pooling to a ``grid x grid`` map (20 x 20), 1x1 conv, LeakyReLU, 1x1 conv,
  L2 normalisation over channels.
* :class:`PooledClusterHeads` - GMI's global projectors: max pooling, ``n_heads`` linear layers to
  K clusters, softmax (GMI Sec. 4.2: K = 10, 5 heads).
* :class:`MapDiscriminator` - adversarial training's image-level discriminator on softmax maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segssl.models.ops import conv1x1, softmax_entropy

__all__ = [
    "ClusterHeads",
    "DenseProjector",
    "GlobalProjector",
    "MapDiscriminator",
    "PooledClusterHeads",
]


def _check_positive_int(value: int, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_input(x: Tensor, in_ch: int, owner: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_ch:
        raise ValueError(
            f"{owner} expects a (B, {in_ch}, H, W) feature map, got shape {tuple(x.shape)}"
        )


class _MaskedSoftmax(torch.autograd.Function):
    """``softmax(z, dim) * mask`` with ONE saved buffer (the masked output).

    The softmax is ATen's fused kernel (one pass instead of max, subtract, exp, sum and divide),
    and the mask is multiplied into its output in place. For a binary mask the backward is the
    ordinary softmax backward evaluated on the masked output: at masked pixels the output is 0,
    so the gradient is 0 there as well; elsewhere the output equals the softmax.
    """

    @staticmethod
    def forward(ctx, z: Tensor, dim: int, mask: Tensor) -> Tensor:
        p = torch.softmax(z, dim).mul_(mask)
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (p,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad, p, ctx.dim, p.dtype), None, None


class ClusterHeads(nn.Module):
    """``n_heads`` independent cluster projectors: 1x1 conv to K channels, softmax over K.

    The heads are stored as ``n_heads`` separate ``Conv2d`` modules (state-dict keys
    ``heads.<i>.weight`` / ``heads.<i>.bias``) but evaluated as ONE 1x1 convolution with
    ``n_heads * K`` outputs (their weights concatenated) and one softmax over the K axis of a
    ``(B, n_heads, K, H, W)`` view; the result equals running the heads one by one.

    Args:
        in_ch: channels of the tapped feature map.
        k: number of clusters K (>= 2; 40 in the BIM paper).
        n_heads: number of sub-heads (3 in the BIM paper).

    Shapes:
        input ``(B, in_ch, H, W)`` -> list of ``n_heads`` tensors ``(B, K, H, W)`` (views of one
        stacked tensor), each a softmax over K (values in [0, 1], summing to 1 over dim 1).
        :meth:`probs` returns the stacked ``(B, n_heads, K, H, W)`` tensor itself.
    """

    def __init__(self, in_ch: int, k: int = 40, n_heads: int = 3) -> None:
        super().__init__()
        _check_positive_int(in_ch, "in_ch")
        _check_positive_int(k, "K", minimum=2)
        _check_positive_int(n_heads, "n_heads")
        self.in_ch, self.k, self.n_heads = in_ch, k, n_heads
        self.heads = nn.ModuleList(nn.Conv2d(in_ch, k, kernel_size=1) for _ in range(n_heads))

    def _conv(self, x: Tensor) -> Tensor:
        """All heads' scores from ONE 1x1 conv (weights concatenated), ``(B, n_heads*K, H, W)``,
        computed as a batched matrix product over channels (:func:`~segssl.models.ops.conv1x1`;
        on CPU ``conv2d`` would take the generic ``_slow_conv2d`` path)."""
        _check_input(x, self.in_ch, "ClusterHeads")
        weight = torch.cat([h.weight for h in self.heads])  # (n_heads*K, in_ch, 1, 1)
        return conv1x1(x, weight, torch.cat([h.bias for h in self.heads]))

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        return (x.shape[0], len(self.heads), self.k, *x.shape[2:])

    def stacked_logits(self, x: Tensor) -> Tensor:
        """Pre-softmax scores of all heads, ``(B, n_heads, K, H, W)``."""
        return self._conv(x).view(self._shape(x))

    def logits(self, x: Tensor) -> list[Tensor]:
        """Pre-softmax scores of every head, ``(B, K, H, W)`` each."""
        return list(self.stacked_logits(x).unbind(1))

    def probs(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Float32 cluster probabilities of all heads, ``(B, n_heads, K, H, W)`` (softmax, dim 2).

        Args:
            x: ``(B, in_ch, H, W)`` features.
            mask: optional binary ``(B, 1, H, W)`` pixel mask (bool, or floats that are all 0 or
                1, such as :meth:`TransformState.valid_mask`); the probabilities are multiplied
                by it (zero outside), with the gradient of ``softmax * mask``. Its values are
                not inspected here (that would read them back to the host at every step, a GPU
                synchronisation); other values give ``softmax * mask`` with a gradient that is
                not the product rule's.

        Raises:
            ValueError: on a wrong feature shape, or a mask that is not a ``(B, 1, H, W)``
                float or bool tensor.
        """
        # float32 as autocast runs softmax
        z = self._conv(x).float().view(self._shape(x))
        if mask is None:
            return torch.softmax(z, 2)
        want = (x.shape[0], 1, *x.shape[2:])
        binary_type = mask.dtype.is_floating_point or mask.dtype == torch.bool
        if tuple(mask.shape) != want or not binary_type:
            raise ValueError(
                f"mask must be a float or bool tensor of shape {want} for features "
                f"{tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        return _MaskedSoftmax.apply(z, 2, mask.to(z.dtype).unsqueeze(1))  # (B, 1, 1, H, W)

    def probs_and_entropy(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`probs` (no mask) and the pixel entropy of every head, in one autograd node.

        The entropy ``-sum_k p_k log p_k`` (nats) is what L_CC correlates with the image edges;
        computing it with the softmax (:func:`~segssl.models.ops.softmax_entropy`) saves a
        logarithm pass over the full-resolution maps and one full-size gradient sum in the
        backward. Values and gradients equal ``probs`` followed by the entropy formula.

        Returns:
            Float32 ``(B, n_heads, K, H, W)`` probabilities and ``(B, n_heads, H, W)`` entropies.
        """
        return softmax_entropy(self._conv(x).float().view(self._shape(x)), 2)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Cluster probabilities of every head (softmax over K), ``(B, K, H, W)`` each."""
        return list(self.probs(x).unbind(1))


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


class PooledClusterHeads(nn.Module):
    """GMI's global projectors: max-pool the map, then ``n_heads`` linear layers to K clusters.

    The GMI paper (Sec. 4.2): "for the encoder, the projector head consists of a max-pooling layer
    to summarize context information, a linear layer and a softmax activation layer"; 5 heads,
    K = 10. All heads are one ``Linear(in_ch, n_heads * K)``.

    Shapes:
        input ``(B, in_ch, H, W)`` -> ``(B, n_heads, K)``, softmax over K (float32).
    """

    def __init__(self, in_ch: int, k: int = 10, n_heads: int = 5) -> None:
        super().__init__()
        _check_positive_int(in_ch, "in_ch")
        _check_positive_int(k, "K", minimum=2)
        _check_positive_int(n_heads, "n_heads")
        self.in_ch, self.k, self.n_heads = in_ch, k, n_heads
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.linear = nn.Linear(in_ch, n_heads * k)

    def forward(self, x: Tensor) -> Tensor:
        """Cluster probabilities of every head."""
        _check_input(x, self.in_ch, "PooledClusterHeads")
        z = self.linear(self.pool(x).flatten(1)).view(x.shape[0], self.n_heads, self.k)
        return z.float().softmax(-1)


class MapDiscriminator(nn.Module):
    """Image-level discriminator on segmentation maps (adversarial training, Zhang et al. 2017):
    strided 4x4 convolutions with LeakyReLU (``widths`` channels, each halving the side), global
    average pooling and a linear layer to one "labeled image" logit.

    Shapes:
        input ``(B, C, H, W)`` class probabilities -> ``(B, 1)`` logits.
    """

    def __init__(self, in_ch: int, widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        _check_positive_int(in_ch, "in_ch")
        if not widths:
            raise ValueError("the discriminator needs at least one conv layer (widths)")
        for w in widths:
            _check_positive_int(w, "discriminator width")
        self.in_ch = in_ch
        layers: list[nn.Module] = []
        c = in_ch
        for w in widths:
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c, 1)

    def forward(self, x: Tensor) -> Tensor:
        """One logit per image: high for maps the discriminator takes for labeled ones."""
        _check_input(x, self.in_ch, "MapDiscriminator")
        return self.out(self.features(x).mean(dim=(2, 3)))
