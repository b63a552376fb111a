"""Pretext-task inputs, targets and losses (rotation, inpainting, context restoration)."""

from __future__ import annotations

import pytest
import torch

from segssl.losses.pretext import inpainting_mask, masked_mse, rotations, swap_patches


def test_rotations_labels_and_images() -> None:
    x = torch.arange(2 * 9, dtype=torch.float32).view(2, 1, 3, 3)
    x4, k = rotations(x)
    assert k.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(x4[:2], x)
    torch.testing.assert_close(x4[2, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))
    torch.testing.assert_close(x4[5], torch.rot90(x[1], 2, dims=(1, 2)))
    with pytest.raises(ValueError, match="square"):
        rotations(torch.zeros(1, 1, 3, 4))


def test_inpainting_mask_squares() -> None:
    g = torch.Generator().manual_seed(0)
    m = inpainting_mask((3, 1, 20, 20), size=0.25, regions=1, generator=g)
    assert m.shape == (3, 1, 20, 20)
    assert m.sum((1, 2, 3)).tolist() == [25.0, 25.0, 25.0]  # one 5 x 5 square each
    with pytest.raises(ValueError, match=r"fraction of the image side in \(0, 1\)"):
        inpainting_mask((1, 1, 8, 8), size=1.5, regions=1, generator=g)


def test_swap_patches_keeps_histogram_and_changes_layout() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 16, 16, generator=g)
    y = swap_patches(x, size=0.25, swaps=3, generator=g)
    assert not torch.equal(x, y)
    for i in range(2):
        torch.testing.assert_close(x[i].flatten().sort().values, y[i].flatten().sort().values)
    assert torch.equal(x, x.clone())  # input untouched
    with pytest.raises(ValueError, match="cannot be disjoint"):
        swap_patches(torch.zeros(1, 1, 4, 4), size=0.75, swaps=1, generator=g)


@pytest.mark.parametrize(("side", "size"), [(8, 0.5), (9, 0.4), (10, 0.5), (12, 0.34)])
def test_swap_patches_swaps_two_disjoint_squares_inside_the_image(side: int, size: float) -> None:
    """Chen et al.: two isolated patches of the image swap places. Patches over a third of the
    side left no room beside a first patch in the middle: the second was placed past the edge
    (an index error, or a patch wrapped into the next rows)."""
    g = torch.Generator().manual_seed(0)
    b, s = 300, max(1, round(size * side))
    x = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side).repeat(b, 1, 1, 1)
    y = swap_patches(x, size=size, swaps=1, generator=g)
    firsts = set()
    for i in range(b):
        changed = (y[i, 0] != x[i, 0]).nonzero().tolist()
        assert len(changed) == 2 * s * s
        r1, c1 = changed[0]  # row-major first changed pixel: a patch corner
        r2, c2 = divmod(int(y[i, 0, r1, c1]), side)  # where its new content came from
        assert 0 <= r2 <= side - s and 0 <= c2 <= side - s
        assert abs(r1 - r2) >= s or abs(c1 - c2) >= s  # disjoint
        a, z = (slice(r1, r1 + s), slice(c1, c1 + s)), (slice(r2, r2 + s), slice(c2, c2 + s))
        assert torch.equal(y[i, 0][a], x[i, 0][z]) and torch.equal(y[i, 0][z], x[i, 0][a])
        firsts.update({(r1, c1), (r2, c2)})
    # every corner that has a disjoint partner takes part in some swap
    n = side - s + 1
    partnered = {
        (r, c)
        for r in range(n)
        for c in range(n)
        if any(abs(r - q) >= s or abs(c - d) >= s for q in range(n) for d in range(n))
    }
    assert firsts == partnered  # fmt: skip


def test_masked_mse() -> None:
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert float(masked_mse(pred, target, mask)) == pytest.approx((1 + 16) / 2)
    assert float(masked_mse(pred, target)) == pytest.approx(30 / 4)
