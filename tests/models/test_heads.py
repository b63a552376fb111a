"""Tests of segssl.models.heads: shapes, normalisation, known outputs, errors."""

from __future__ import annotations

import math

import pytest
import torch

from segssl.models import ClusterHeads, DenseProjector, GlobalProjector, UNet


def test_cluster_heads_known_output_and_shapes() -> None:
    heads = ClusterHeads(in_ch=2, k=3, n_heads=2)
    with torch.no_grad():
        for h in heads.heads:
            h.weight.zero_()
            h.bias.zero_()
        heads.heads[0].weight[0, 0] = 1.0  # cluster 0 score = channel 0
        heads.heads[0].bias[2] = math.log(2.0)  # cluster 2 twice as likely as cluster 1
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0, 0, 0] = math.log(3.0)
    probs = heads(x)
    assert len(probs) == 2 and all(p.shape == (1, 3, 2, 2) for p in probs)
    torch.testing.assert_close(probs[0][0, :, 0, 0], torch.tensor([0.5, 1 / 6, 1 / 3]))
    torch.testing.assert_close(probs[0][0, :, 1, 1], torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(probs[1], torch.full((1, 3, 2, 2), 1 / 3))


def test_cluster_heads_on_unet_tap_sum_to_one_and_are_independent() -> None:
    net = UNet(1, 2, base_width=4, depth=3)
    _, feats = net(torch.rand(2, 1, 16, 16), taps=["Up_conv2"])
    f = feats["Up_conv2"]
    heads = ClusterHeads(f.shape[1], k=5, n_heads=3)
    probs = heads(f)
    for p in probs:
        assert p.shape == (2, 5, 16, 16)
        torch.testing.assert_close(p.sum(1), torch.ones(2, 16, 16))
    assert not torch.allclose(probs[0], probs[1])
    probs[0].sum().backward()
    assert heads.heads[1].weight.grad is None and heads.heads[0].weight.grad is not None


def test_global_projector_unit_norm_and_pooling() -> None:
    proj = GlobalProjector(in_ch=8, hidden=16, out=4)
    x = torch.rand(3, 8, 5, 7)
    z = proj(x)
    assert z.shape == (3, 4)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    # global pooling: a spatial permutation of the map gives the same embedding
    perm = torch.randperm(35, generator=torch.Generator().manual_seed(0))
    shuffled = x.flatten(2)[:, :, perm].view(3, 8, 5, 7)
    torch.testing.assert_close(proj(shuffled), z)


def test_dense_projector_grid_and_unit_norm() -> None:
    proj = DenseProjector(in_ch=6, hidden=8, out=5, grid=20)
    z = proj(torch.rand(2, 6, 64, 64))
    assert z.shape == (2, 5, 20, 20)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 20, 20))
    # pooling on a multiple of the grid is plain average pooling of blocks
    x = torch.rand(1, 6, 40, 40)
    manual = proj.mlp(torch.nn.functional.avg_pool2d(x, 2))
    torch.testing.assert_close(proj(x), torch.nn.functional.normalize(manual, dim=1))


def test_heads_reject_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="K must be an int >= 2, got 1"):
        ClusterHeads(8, k=1)
    with pytest.raises(ValueError, match="n_heads must be an int >= 1, got 0"):
        ClusterHeads(8, k=4, n_heads=0)
    with pytest.raises(ValueError, match=r"expects a \(B, 8, H, W\).*\(2, 4, 16, 16\)"):
        ClusterHeads(8, k=4)(torch.rand(2, 4, 16, 16))
    with pytest.raises(ValueError, match=r"GlobalProjector expects a \(B, 8, H, W\)"):
        GlobalProjector(8)(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="grid must be an int >= 1, got 0"):
        DenseProjector(8, grid=0)
