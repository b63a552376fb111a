"""Chaitanya's contrasting strategies and IDEAL's dense InfoNCE on hand-built embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segssl.augment import TransformState, dense_correspondence
from segssl.losses.contrast_strategies import (
    dense_infonce_loss,
    global_contrastive_loss,
    global_masks,
    local_contrastive_loss,
    local_masks,
    pair_contrastive_loss,
    region_corners,
)
from segssl.losses.contrastive import supcon_loss

# 4 images: (volume 0, partition 0), (volume 0, partition 1), (volume 1, partition 0),
# (volume 1, partition 1); two views each: entries 0-3 view 1, entries 4-7 view 2
PARTITION = torch.tensor([0, 1, 0, 1])
IMAGE = torch.arange(4).repeat(2)
PART8 = PARTITION.repeat(2)


def _sets(mask: torch.Tensor) -> list[set[int]]:
    return [set(torch.nonzero(row).flatten().tolist()) for row in mask]


def test_random_strategy_masks() -> None:
    pos, neg = global_masks(IMAGE, PART8, "random")
    assert _sets(pos) == [{4}, {5}, {6}, {7}, {0}, {1}, {2}, {3}]
    assert _sets(neg)[0] == {1, 2, 3, 5, 6, 7}  # every other image, both views
    assert _sets(neg)[5] == {0, 2, 3, 4, 6, 7}


def test_domain_minus_masks_drop_same_partition_of_other_volumes_from_negatives() -> None:
    pos, neg = global_masks(IMAGE, PART8, "domain_minus")
    assert _sets(pos) == [{4}, {5}, {6}, {7}, {0}, {1}, {2}, {3}]
    p0, p1 = {1, 3, 5, 7}, {0, 2, 4, 6}
    assert _sets(neg) == [p0, p1, p0, p1, p0, p1, p0, p1]
    assert 2 not in _sets(neg)[0] and 6 not in _sets(neg)[0]  # volume 1, partition 0


def test_domain_masks_make_same_partition_of_other_volumes_positive() -> None:
    pos, neg = global_masks(IMAGE, PART8, "domain")
    assert _sets(pos) == [
        {2, 4, 6},
        {3, 5, 7},
        {0, 4, 6},
        {1, 5, 7},
        {0, 2, 6},
        {1, 3, 7},
        {0, 2, 4},
        {1, 3, 5},
    ]
    p0, p1 = {1, 3, 5, 7}, {0, 2, 4, 6}
    assert _sets(neg) == [p0, p1, p0, p1, p0, p1, p0, p1]


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown global contrasting strategy 'domian'"):
        global_masks(IMAGE, PART8, "domian")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown local contrasting strategy 'domain_minus'"):
        local_masks(IMAGE, PART8, [(0, 0)], "domain_minus")  # type: ignore[arg-type]


def _np_pair_loss(z: np.ndarray, pos: np.ndarray, neg: np.ndarray, tau: float) -> float:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    terms = []
    for a in range(len(z)):
        negs = sum(math.exp(z[a] @ z[n] / tau) for n in range(len(z)) if neg[a, n])
        for p in range(len(z)):
            if pos[a, p]:
                e = math.exp(z[a] @ z[p] / tau)
                terms.append(-math.log(e / (e + negs)))
    return float(np.mean(terms))


@pytest.mark.parametrize("strategy", ["random", "domain_minus", "domain"])
def test_global_loss_golden(strategy: str) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    pos, neg = global_masks(IMAGE, PART8, strategy)  # type: ignore[arg-type]
    want = _np_pair_loss(z.numpy(), pos.numpy(), neg.numpy(), 0.1)
    got = global_contrastive_loss(z, PARTITION, strategy, temperature=0.1)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_random_strategy_with_two_views_is_nt_xent() -> None:
    z = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        global_contrastive_loss(z, PARTITION, "random", 0.1), supcon_loss(z, None, 0.1)
    )


def test_global_loss_lower_when_positives_align() -> None:
    # domain: embeddings that cluster by partition beat embeddings that cluster by volume
    by_partition = F.one_hot(PART8, 4).float() + 0.05
    by_volume = F.one_hot(torch.tensor([0, 0, 1, 1] * 2), 4).float() + 0.05
    assert float(global_contrastive_loss(by_partition, PARTITION, "domain")) < float(
        global_contrastive_loss(by_volume, PARTITION, "domain")
    )
    # random: both views of an image equal beats views of an image orthogonal
    aligned = F.one_hot(IMAGE, 8).float()
    crossed = F.one_hot(torch.arange(8), 8).float()
    assert float(global_contrastive_loss(aligned, PARTITION, "random")) < float(
        global_contrastive_loss(crossed, PARTITION, "random")
    )


def test_three_versions_per_image() -> None:
    z = torch.randn(12, 4, generator=torch.Generator().manual_seed(3))
    image = torch.arange(4).repeat(3)
    pos, _ = global_masks(image, PARTITION.repeat(3), "domain_minus")
    assert _sets(pos)[0] == {4, 8}  # the two transformed versions of the same image
    assert torch.isfinite(global_contrastive_loss(z, PARTITION, "domain_minus"))


def test_pair_loss_errors_and_no_positive() -> None:
    z = torch.randn(3, 2)
    eye = torch.eye(3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"\(3, 3\) bool mask"):
        pair_contrastive_loss(z, torch.zeros(2, 2, dtype=torch.bool), ~eye)
    assert float(pair_contrastive_loss(z, torch.zeros(3, 3, dtype=torch.bool), ~eye)) == 0.0


# ------------------------------------------------------------------------------- local
def test_region_corners_layout_and_fit() -> None:
    got = [list(c) for c in region_corners(9, 9, 13, 1)]
    assert got == [
        [0, 0], [0, 4], [0, 8], [4, 0], [4, 4], [4, 8], [8, 0], [8, 4], [8, 8],
        [2, 2], [2, 6], [6, 2], [6, 6],
    ]  # fmt: skip
    assert region_corners(12, 12, 13, 3)[2] == (0, 9)  # 3x3 regions stay inside
    with pytest.raises(ValueError, match=r"A=13 local regions of 1x1 do not fit in a 4x4"):
        region_corners(4, 4, 13, 1)
    with pytest.raises(ValueError, match="regions \\(A\\) must be in 1..13"):
        region_corners(32, 32, 14, 1)
    with pytest.raises(ValueError, match="3x3 region does not fit in a 2x2"):
        region_corners(2, 2, 1, 3)


def test_local_masks_random_and_domain() -> None:
    # 3 images: 0 and 1 share partition 0 (volumes 0, 1), image 2 is partition 1; two views;
    # 3 regions at (0,0), (0,2), (2,2): only regions 0 and 2 differ in both row and column
    image = torch.arange(3).repeat(2)
    part = torch.tensor([0, 0, 1]).repeat(2)
    corners = [(0, 0), (0, 2), (2, 2)]

    def entry(img: int, view: int, region: int) -> int:
        return (view * 3 + img) * 3 + region

    pos, neg = local_masks(image, part, corners, "random")
    a = entry(0, 0, 0)
    assert _sets(pos)[a] == {entry(0, 1, 0)}
    assert _sets(neg)[a] == {entry(0, 0, 2), entry(0, 1, 2)}
    assert _sets(neg)[entry(0, 0, 1)] == set()  # region (0,2) shares a row or column with all
    pos, neg = local_masks(image, part, corners, "domain")
    assert _sets(pos)[a] == {entry(0, 1, 0), entry(1, 0, 0), entry(1, 1, 0)}
    assert _sets(neg)[a] == {entry(i, v, 2) for i in (0, 1) for v in (0, 1)}
    assert _sets(pos)[entry(2, 0, 0)] == {entry(2, 1, 0)}  # partition 1 has no other image


def test_local_loss_lower_when_views_agree_and_golden() -> None:
    g = torch.Generator().manual_seed(4)
    f = torch.randn(2, 3, 9, 9, generator=g)  # 2 images, partitions 0 and 1
    part = torch.tensor([0, 1])
    same = torch.cat([f, f])
    other = torch.cat([f, torch.randn(2, 3, 9, 9, generator=g)])
    for strategy in ("random", "domain"):
        assert float(local_contrastive_loss(same, part, strategy, 13, 1)) < float(
            local_contrastive_loss(other, part, strategy, 13, 1)
        )
    corners = region_corners(9, 9, 13, 3)
    z = torch.stack([other[:, :, r : r + 3, c : c + 3] for r, c in corners], 1)
    pos, neg = local_masks(torch.arange(2).repeat(2), part.repeat(2), corners, "random")
    want = _np_pair_loss(z.flatten(2).flatten(0, 1).double().numpy(), pos.numpy(), neg.numpy(), 0.1)
    got = local_contrastive_loss(other, part, "random", 13, 3, 0.1)
    assert float(got) == pytest.approx(want, rel=1e-4)


# ------------------------------------------------------------------------------- IDEAL
def _shift_state(cells: int, side: int) -> TransformState:
    """A pure translation by ``cells`` grid cells to the right (no gamma, scale, rotation)."""
    return TransformState(
        gamma=torch.ones(1, dtype=torch.float64),
        scale=torch.ones(1, dtype=torch.float64),
        angle=torch.zeros(1, dtype=torch.float64),
        shift=torch.tensor([[cells / side, 0.0]], dtype=torch.float64),
        flip=torch.zeros(1, dtype=torch.bool),
    )


def test_translation_puts_the_dense_positive_at_the_shifted_location() -> None:
    side = 6
    k = torch.randn(1, 8, side, side, generator=torch.Generator().manual_seed(5))
    state = _shift_state(1, side)
    q = state.geometry(k, mode="nearest")  # content moved one column to the right
    torch.testing.assert_close(q[..., 1:], k[..., :-1])
    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    match, valid = dense_correspondence(
        state.theta(side, side, "cpu", torch.float64), identity, side, side
    )
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    assert torch.equal(valid[0], (cols >= 1).flatten())  # column 0 came from outside
    assert torch.equal(match[0][valid[0]], (rows * side + cols - 1).flatten()[valid[0]])
    # the same point of the scene, found through the transform, is the positive
    qf, kf = q.flatten(2)[0], k.flatten(2)[0]
    torch.testing.assert_close(qf[:, valid[0]], kf[:, match[0][valid[0]]])
    good = dense_infonce_loss(q, k, match, valid)
    naive = dense_infonce_loss(q, k, torch.arange(side * side).view(1, -1), valid)
    assert float(good) < float(naive) - 1.0


def test_dense_correspondence_through_two_transformed_views() -> None:
    side = 8
    x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(6))
    a, b = _shift_state(2, side), _shift_state(-1, side)
    qv, kv = a.geometry(x, mode="nearest"), b.geometry(x, mode="nearest")
    th = (a.theta(side, side, "cpu", torch.float64), b.theta(side, side, "cpu", torch.float64))
    match, valid = dense_correspondence(th[0], th[1], side, side)
    q, k = qv.flatten(2)[0], kv.flatten(2)[0]
    ok = valid[0] & (q.abs().sum(0) > 0)
    assert int(ok.sum()) == side * (side - 3)  # 3 columns lost between the two shifts
    torch.testing.assert_close(q[:, ok], k[:, match[0][ok]])


def test_dense_infonce_negatives_and_errors() -> None:
    g = torch.Generator().manual_seed(7)
    q, k = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    match = torch.arange(9).repeat(2, 1)
    valid = torch.ones(2, 9, dtype=torch.bool)
    # golden: cross-entropy over all 18 keys / over the 9 keys of the other image + positive
    qq = F.normalize(q, dim=1).flatten(2).transpose(1, 2).reshape(18, 4)
    kk = F.normalize(k, dim=1).flatten(2).transpose(1, 2).reshape(18, 4)
    logits = qq @ kk.t() / 0.1
    want = F.cross_entropy(logits, torch.arange(18))
    torch.testing.assert_close(dense_infonce_loss(q, k, match, valid), want)
    other = [
        torch.cat([logits[i, i : i + 1], logits[i, 9:] if i < 9 else logits[i, :9]])
        for i in range(18)
    ]
    want_other = F.cross_entropy(torch.stack(other), torch.zeros(18, dtype=torch.long))
    got_other = dense_infonce_loss(q, k, match, valid, negatives="other_images")
    torch.testing.assert_close(got_other, want_other)
    with pytest.raises(ValueError, match=r"match must be \(B, H\*W\) = \(2, 9\)"):
        dense_infonce_loss(q, k, match[:, :4], valid)
    assert float(dense_infonce_loss(q, k, match, torch.zeros_like(valid))) == 0.0


def test_domain_positives_come_from_other_volumes_only() -> None:
    # slices 0 and 1 share volume 0 and partition 0 (a batch not drawn by the partition
    # sampler); slice 2 is partition 0 of volume 1. G^D: only the other volume's slice (and the
    # views) is a positive; G^D-/G^D: the same-volume slice of the partition is no negative either
    image, part = torch.arange(3).repeat(2), torch.tensor([0, 0, 0]).repeat(2)
    vol = torch.tensor([0, 0, 1]).repeat(2)
    pos, neg = global_masks(image, part, "domain", volume=vol)
    assert _sets(pos)[0] == {2, 3, 5} and _sets(neg)[0] == set()
    pos, neg = global_masks(image, part, "domain_minus", volume=vol)
    assert _sets(pos)[0] == {3} and _sets(neg)[0] == set()
    corners = [(0, 0), (1, 1)]
    lpos, lneg = local_masks(image, part, corners, "domain", volume=vol)
    # entry i*A + a; anchor: image 0 view 1 region 0 -> region 0 of views of images 0 and 2
    assert _sets(lpos)[0] == {4, 6, 10} and _sets(lneg)[0] == {1, 5, 7, 11}
    z = torch.randn(6, 8)
    same = global_contrastive_loss(z, torch.tensor([0, 0, 0]), "domain", volume=vol[:3])
    pos_ref, neg_ref = global_masks(image, part, "domain", volume=vol)
    torch.testing.assert_close(same, pair_contrastive_loss(z, pos_ref, neg_ref))
