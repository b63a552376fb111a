"""Equivalence tests of segssl.models.ops: the matmul 1x1 convolution and the fused softmax +
entropy node, values and gradients against the plain formulations they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segssl.losses.boundary import entropy_map
from segssl.models import UNet
from segssl.models.ops import Conv1x1, conv1x1, softmax_entropy


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_equals_conv2d_with_gradients(bias: bool) -> None:
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(6, 4, 1, bias=bias)
    fast = Conv1x1(6, 4, bias=bias)
    fast.load_state_dict(conv.state_dict())  # the same parameters and keys
    x = torch.randn(3, 6, 9, 7, generator=g)
    up = torch.randn(3, 4, 9, 7, generator=g)
    outs, grads = [], []
    for module in (conv, fast):
        xi = x.clone().requires_grad_()
        y = module(xi)
        (y * up).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in module.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b)
    # a non-contiguous input takes conv2d (no copy), with the same result
    xt = x.transpose(2, 3)
    torch.testing.assert_close(fast(xt), conv(xt))
    torch.testing.assert_close(conv1x1(x, conv.weight, conv.bias), outs[0])


def test_unet_head_is_the_matmul_conv_with_conv2d_keys() -> None:
    net = UNet(1, 3, base_width=4, depth=3)
    assert isinstance(net.Conv_1x1, Conv1x1) and isinstance(net.Conv_1x1, torch.nn.Conv2d)
    assert {"Conv_1x1.weight", "Conv_1x1.bias"} <= set(net.state_dict())
    d = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(
        net.decode_head(d), F.conv2d(d, net.Conv_1x1.weight, net.Conv_1x1.bias)
    )


def _two_nodes(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulation the fused node replaces: softmax, then the entropy of entropy_map."""
    p = torch.softmax(z, dim)
    return p, entropy_map(p.unsqueeze(1) if dim == 1 else p, normalise=False).squeeze(1)


@pytest.mark.parametrize("outputs", ["both", "probs", "entropy"])
def test_softmax_entropy_equals_softmax_then_entropy_with_gradients(outputs: str) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 3, 5, 6, 7, generator=g) * 4  # (B, heads, K, H, W), softmax over dim 2
    z[0, 0, :, 1, 1] = torch.tensor([60.0, -60.0, 0.0, 0.0, 0.0])  # probabilities below 1e-10
    up_p = torch.randn(z.shape, generator=g)
    up_h = torch.randn(2, 3, 6, 7, generator=g) * 10

    def loss(pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p, h = pair
        terms = {"probs": (p * up_p).sum(), "entropy": (h * up_h).sum()}
        return sum(terms.values()) if outputs == "both" else terms[outputs]

    z_new = z.clone().requires_grad_()
    p_new, h_new = softmax_entropy(z_new, 2)
    z_ref = z.clone().requires_grad_()
    p_ref, h_ref = _two_nodes(z_ref, 2)
    assert h_new.shape == (2, 3, 6, 7)
    assert torch.equal(p_new, p_ref) and torch.equal(h_new, h_ref)  # the same arithmetic
    loss((p_new, h_new)).backward()
    loss((p_ref, h_ref)).backward()
    torch.testing.assert_close(z_new.grad, z_ref.grad, rtol=1e-5, atol=1e-5)
    # and against float64 (where the constant the fused backward drops cancels exactly)
    z64 = z.double().requires_grad_()
    p64 = torch.softmax(z64, 2)
    h64 = -(p64 * p64.clamp_min(1e-10).log()).sum(2)
    loss((p64, h64)).backward()
    torch.testing.assert_close(z_new.grad.double(), z64.grad, rtol=1e-5, atol=1e-5)


def test_softmax_entropy_gradient_has_the_entropy_term() -> None:
    """Negative control: dropping the entropy's gradient (or its sign) is detected."""
    z = torch.randn(2, 4, 5, 5, generator=torch.Generator().manual_seed(2)).requires_grad_()
    _, h = softmax_entropy(z, 1)
    (g,) = torch.autograd.grad(h.sum(), z)
    p = torch.softmax(z.detach(), 1)
    expected = -p * (p.log() + (-(p * p.log()).sum(1, keepdim=True)))  # dH/dz = -p (log p + H)
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-6)
    assert g.abs().max() > 1e-2
