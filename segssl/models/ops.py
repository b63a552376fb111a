"""Kernels shared by the models and heads: 1x1 convolutions as matrix products, and a softmax
that also returns its entropy.

* :func:`conv1x1` - a 1x1 convolution as ONE batched matrix product over channels. On CPU,
  ``conv2d`` sends small 1x1 convolutions to the generic ``_slow_conv2d`` path (a separate bias
  pass and a slower backward); ``baddbmm`` is the same arithmetic in one BLAS call.
* :class:`Conv1x1` - ``nn.Conv2d`` with kernel 1 that runs :func:`conv1x1` on contiguous CPU
  input (the same parameters and state-dict keys; ``conv2d`` elsewhere, e.g. cuDNN on GPUs).
* :func:`softmax_entropy` - ``p = softmax(z)`` and the entropy ``-sum p log p`` over the same
  axis in one autograd node: the backward folds the entropy's gradient into the softmax
  backward (one fused multiply-add) instead of forming the entropy's full-size gradient and
  summing it with the probabilities' own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv1x1", "conv1x1", "softmax_entropy"]

_FLOOR = 1e-10  # probabilities below it enter the logarithm as 1e-10 (as in entropy_map)


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``conv2d(x, weight, bias)`` for a 1x1 kernel, as ``W @ x[b] + bias`` per image.

    Args:
        x: ``(B, C, H, W)`` input.
        weight: ``(O, C, 1, 1)`` or ``(O, C)`` weights.
        bias: ``(O,)`` or None.

    Returns:
        ``(B, O, H, W)``, contiguous.
    """
    w = weight.flatten(1)  # (O, C)
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1)  # a view for contiguous maps (channels_last: one copy)
    wb = w.expand(b, *w.shape)
    z = torch.bmm(wb, flat) if bias is None else torch.baddbmm(bias.view(1, -1, 1), wb, flat)
    return z.view(b, w.shape[0], *x.shape[2:])


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (stride 1, no padding, one group) computed by :func:`conv1x1` on
    contiguous CPU tensors; other devices and layouts use ``conv2d`` (cuDNN's 1x1 kernels,
    channels_last without a copy). Parameters and state-dict keys are those of ``nn.Conv2d``."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """The convolution (see the class docstring for the path taken)."""
        if x.device.type == "cpu" and x.ndim == 4 and x.is_contiguous():
            return conv1x1(x, self.weight, self.bias)
        return F.conv2d(x, self.weight, self.bias)


class _SoftmaxEntropy(torch.autograd.Function):
    """``(softmax(z, dim), -sum(p * log max(p, 1e-10), dim))`` with one backward for both.

    The forward is the arithmetic of ``torch.softmax`` followed by the entropy of
    :func:`~segssl.losses.boundary.entropy_map` (the same floor, the same rounding: the values
    are bit-identical to that pair). Saved: ``p`` and ``log max(p, 1e-10)``. The entropy's
    gradient ``-g_H * (log p + 1)`` enters the softmax backward, where the constant ``+1``
    cancels (``p * (c - <p, c>) = 0`` for a constant ``c``), so ``dz = softmax_backward(g_p -
    g_H * log p, p)``: one fused multiply-add instead of the entropy's own backward pass plus
    the sum of two full-size gradients.
    """

    @staticmethod
    def forward(ctx, z: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        p = torch.softmax(z, dim)
        log_p = p.clamp_min(_FLOOR).log_()
        ent = torch.linalg.vecdot(p, log_p, dim=dim).neg_()
        ctx.dim = dim
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(p, log_p)
        return p, ent

    @staticmethod
    def backward(ctx, g_p: Tensor | None, g_ent: Tensor | None) -> tuple[Tensor | None, None]:
        p, log_p = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward (create_graph): the saved log is a
            # constant to autograd; as a function of p (a saved output, it carries this node's
            # graph) the second derivative sees log p's dependence on z
            log_p = p.clamp_min(_FLOOR).log()
        if g_ent is None:
            if g_p is None:
                return None, None
            g = g_p
        else:
            g_ent = g_ent.unsqueeze(ctx.dim)
            g = log_p * g_ent.neg() if g_p is None else torch.addcmul(g_p, g_ent, log_p, value=-1)
        return torch._softmax_backward_data(g, p, ctx.dim, p.dtype), None


def softmax_entropy(z: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Softmax of ``z`` over ``dim`` and its entropy (nats) over the same axis.

    Args:
        z: float logits (any shape).
        dim: the category axis.

    Returns:
        ``p`` (the shape of ``z``) and ``H = -sum_k p_k log max(p_k, 1e-10)`` (``dim`` removed),
        both with gradients (second derivatives too); the values of ``torch.softmax`` and of
        the entropy formula. Float32 for float16/bfloat16 logits, and float32 arithmetic
        under autocast (as ``torch.softmax`` runs there).
    """
    if z.dtype in (torch.float16, torch.bfloat16):
        z = z.float()  # the floor 1e-10 is 0 in float16 (log 0 = -inf, then 0 * -inf = nan)
    with torch.autocast(z.device.type, enabled=False):  # autocast runs vecdot in half
        return _SoftmaxEntropy.apply(z, dim)
