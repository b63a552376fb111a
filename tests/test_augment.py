"""Tests of segssl.augment: paired-transform equivariance, reproducibility, base augmentations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segssl.augment import BaseAugment, PairedTransform, TransformState, make_generator
from segssl.config import AugmentConfig


def _smooth_images(b: int, h: int, w: int) -> torch.Tensor:
    y = torch.linspace(-1, 1, h).view(1, 1, h, 1)
    x = torch.linspace(-1, 1, w).view(1, 1, 1, w)
    k = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1)
    return torch.exp(-((x - 0.2) ** 2 + (y + 0.1 * k) ** 2) / 0.2) + 0.3 * torch.sin(2 * x * k)


def _state(**kw: object) -> TransformState:
    base = dict(
        gamma=torch.ones(1, dtype=torch.float64),
        scale=torch.ones(1, dtype=torch.float64),
        angle=torch.zeros(1, dtype=torch.float64),
        shift=torch.zeros(1, 2, dtype=torch.float64),
        flip=torch.zeros(1, dtype=torch.bool),
    )
    base.update(kw)
    return TransformState(**base)  # type: ignore[arg-type]


def test_identity_state_is_identity() -> None:
    x = _smooth_images(1, 16, 12)
    torch.testing.assert_close(_state().image(x), x, atol=1e-5, rtol=0)


def test_known_geometry_90_degree_rotation_and_flip() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    rot = _state(angle=torch.tensor([math.pi / 2], dtype=torch.float64)).geometry(x)
    # content rotated by 90 degrees: a permutation of the pixels (exact on a square grid)
    assert sorted(rot.flatten().round().tolist()) == list(range(16))
    options = [torch.rot90(x, 1, (2, 3)), torch.rot90(x, -1, (2, 3))]
    assert any(torch.allclose(rot, o, atol=1e-4) for o in options)
    flipped = _state(flip=torch.tensor([True])).geometry(x)
    torch.testing.assert_close(flipped, torch.flip(x, dims=(3,)), atol=1e-5, rtol=0)


def test_translation_moves_by_fraction_of_side() -> None:
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 10, 5] = 1.0
    out = _state(shift=torch.tensor([[0.1, 0.0]], dtype=torch.float64)).geometry(x)
    iy, ix = divmod(int(out.flatten().argmax()), 20)
    assert (iy, ix) == (10, 7)  # 10 % of 20 px = 2 px to the right


def test_same_state_equivariance_at_two_resolutions() -> None:
    """Identity 'network' s = average pooling: T(s(x)) ~ s(T(x)) at 1/2 and full resolution."""
    x = _smooth_images(3, 64, 64)
    state = PairedTransform().sample(3, make_generator(0))
    geo = state.geometry(x)
    # same resolution: geometry only equals the image transform without gamma
    no_gamma = TransformState(torch.ones(3), state.scale, state.angle, state.shift, state.flip)
    torch.testing.assert_close(no_gamma.image(x), geo)
    # half resolution with more channels: T(pool(x)) vs pool(T(x))
    feats = F.avg_pool2d(x, 2).repeat(1, 5, 1, 1)
    lhs = state.geometry(feats)
    rhs = F.avg_pool2d(geo, 2).repeat(1, 5, 1, 1)
    inner = (slice(None), slice(None), slice(6, 26), slice(6, 26))  # away from zero padding
    err = (lhs - rhs)[inner].abs()
    assert float(err.mean()) < 0.02 and float(err.max()) < 0.1
    # a different state is clearly different (the test can fail)
    other = PairedTransform().sample(3, make_generator(1)).geometry(feats)
    assert float((other - rhs)[inner].abs().mean()) > 5 * float(err.mean())


def test_same_seed_reproduces_state_and_different_seed_does_not() -> None:
    t = PairedTransform()
    a, b, c = (t.sample(4, make_generator(s)) for s in (7, 7, 8))
    x = _smooth_images(4, 32, 32)
    torch.testing.assert_close(a.image(x), b.image(x))
    assert not torch.allclose(a.image(x), c.image(x))


def test_sampled_parameters_lie_in_the_configured_ranges() -> None:
    cfg = AugmentConfig(gamma=(0.5, 2.0), scale=(0.8, 1.3), paired_rotation=45, translation=0.1)
    s = PairedTransform.from_config(cfg).sample(500, make_generator(3))
    assert float(s.gamma.min()) >= 0.5 and float(s.gamma.max()) <= 2.0
    assert float(s.gamma.min()) < 0.6 and float(s.gamma.max()) > 1.8
    assert float(s.scale.min()) >= 0.8 and float(s.scale.max()) <= 1.3
    assert float(s.angle.abs().max()) <= math.radians(45) + 1e-9
    assert float(s.angle.abs().max()) > math.radians(40)
    assert float(s.shift.abs().max()) <= 0.1
    assert not bool(s.flip.any())


def test_gamma_is_intensity_only_and_keeps_range() -> None:
    x = _smooth_images(2, 16, 16) - 0.5  # negative values are fine
    s = TransformState(
        torch.tensor([2.0, 0.5], dtype=torch.float64),
        torch.ones(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        torch.zeros(2, 2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.bool),
    )
    out = s.intensity(x)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    unit = (x - lo) / (hi - lo)
    expected = lo + (hi - lo) * unit ** torch.tensor([2.0, 0.5]).view(2, 1, 1, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.geometry(x), x, atol=1e-5, rtol=0)  # geometry ignores gamma


def test_labels_warp_with_nearest_and_keep_label_set() -> None:
    lab = torch.zeros(2, 32, 32, dtype=torch.long)
    lab[:, 8:24, 8:24] = 2
    lab[:, 12:20, 12:20] = 3
    s = PairedTransform().sample(2, make_generator(5))
    out = s.labels(lab)
    assert out.dtype == torch.long and set(out.unique().tolist()) <= {0, 2, 3}
    soft = s.geometry((lab == 3).float().unsqueeze(1)).squeeze(1)
    agree = ((soft > 0.5) == (out == 3)).float().mean()
    assert float(agree) > 0.97


def test_state_rejects_wrong_batch_size() -> None:
    s = PairedTransform().sample(2, make_generator(0))
    with pytest.raises(ValueError, match=r"batch size 3 \(shape \(3, 1, 8, 8\)\).*batch size 2"):
        s.geometry(torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="gamma must be a range"):
        PairedTransform(gamma=(2.0, 0.5))


def test_base_augment_crops_jointly_and_reproducibly() -> None:
    cfg = AugmentConfig(crop=16, flip=True, rotation=10.0, intensity_jitter=0.1)
    aug = BaseAugment(cfg)
    img = torch.arange(24 * 24, dtype=torch.float32).view(1, 1, 24, 24).repeat(4, 1, 1, 1)
    lab = torch.arange(24 * 24).view(1, 24, 24).repeat(4, 1, 1)
    out_a, lab_a = aug(img, lab, make_generator(11))
    out_b, lab_b = aug(img, lab, make_generator(11))
    assert out_a.shape == (4, 1, 16, 16) and lab_a is not None and lab_a.shape == (4, 16, 16)
    torch.testing.assert_close(out_a, out_b)
    assert lab_b is not None and torch.equal(lab_a, lab_b)
    # without rotation or jitter the crop of the image and of the labels coincide exactly
    plain = BaseAugment(AugmentConfig(crop=16, flip=True, rotation=0.0, intensity_jitter=0.0))
    out, lab_c = plain(img, lab, make_generator(2))
    assert lab_c is not None
    torch.testing.assert_close(out[:, 0], lab_c.float())


def test_base_augment_rejects_crop_larger_than_image_and_bad_label() -> None:
    aug = BaseAugment(AugmentConfig(crop=224))
    with pytest.raises(ValueError, match=r"augment.crop=224 is larger than the image 64x64"):
        aug(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\).*\(2, 8, 9\)"):
        BaseAugment(AugmentConfig(crop=0))(torch.zeros(2, 1, 8, 8), torch.zeros(2, 8, 9))


def test_rotation_does_not_shear_non_square_maps() -> None:
    """A 90-degree rotation of a centred disc on a 2:1 map keeps it a disc of the same area."""
    h, w = 32, 64
    y = torch.arange(h).view(h, 1) - (h - 1) / 2
    x = torch.arange(w).view(1, w) - (w - 1) / 2
    disc = ((x**2 + (2 * y) ** 2) <= 100).float()  # an ellipse 20 px wide, 10 px high
    s = _state(angle=torch.tensor([math.pi / 2], dtype=torch.float64))
    out = s.geometry(disc.view(1, 1, h, w))[0, 0] > 0.5
    ys, xs = torch.nonzero(out, as_tuple=True)
    assert int(ys.max() - ys.min()) + 1 == pytest.approx(20, abs=1)  # now 20 px high
    assert int(xs.max() - xs.min()) + 1 == pytest.approx(10, abs=1)  # and 10 px wide


def test_intensity_jitter_brightness_scales_the_whole_image() -> None:
    """ColorJitter semantics: out = b * ((x - mean) * c + mean), so mean(out) = b * mean(x) and
    the deviations scale by b * c; b and c recovered from the output lie in [1 - j, 1 + j]."""
    j = 0.1
    aug = BaseAugment(AugmentConfig(crop=0, flip=False, rotation=0.0, intensity_jitter=j))
    x = _smooth_images(3, 16, 16)[torch.arange(64) % 3] + 2.0  # 64 positive images
    out, _ = aug(x, None, make_generator(4))
    mean_in, mean_out = x.mean(dim=(1, 2, 3)), out.mean(dim=(1, 2, 3))
    b = mean_out / mean_in
    dev_ratio = (out - mean_out.view(-1, 1, 1, 1)).std(dim=(1, 2, 3)) / (
        x - mean_in.view(-1, 1, 1, 1)
    ).std(dim=(1, 2, 3))
    c = dev_ratio / b
    tol = 1e-4
    assert bool(((b >= 1 - j - tol) & (b <= 1 + j + tol)).all())
    assert bool(((c >= 1 - j - tol) & (c <= 1 + j + tol)).all())
    assert float(b.max() - b.min()) > j and float(c.max() - c.min()) > j  # really random


def test_gmi_flip_transform_is_exact_horizontal_and_vertical_mirroring() -> None:
    t = PairedTransform(
        gamma=(1.0, 1.0), scale=(1.0, 1.0), rotation=0.0, translation=0.0, flip=True, vflip=True
    )
    state = t.sample(16, make_generator(3))
    assert state.flip.any() and (~state.flip).any() and state.vflip.any() and (~state.vflip).any()
    x = torch.rand(16, 3, 8, 6, generator=torch.Generator().manual_seed(0))
    want = torch.stack(
        [
            xi.flip([-1] * bool(h) + [-2] * bool(v)) if (h or v) else xi
            for xi, h, v in zip(x, state.flip.tolist(), state.vflip.tolist(), strict=True)
        ]
    )
    torch.testing.assert_close(state.geometry(x), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(state.image(x), want, atol=1e-5, rtol=0)  # gamma 1: identity
    assert PairedTransform().sample(2, make_generator(7)).vflip is None  # BIM's T: no vflip


def test_elastic_grid_displacement_bounded_by_alpha() -> None:
    from segssl.augment import elastic_grid

    g = torch.Generator().manual_seed(0)
    grid = elastic_grid(3, 40, 50, alpha=4.0, sigma=5.0, p=1.0, generator=g)
    eye = torch.eye(2, 3, dtype=torch.float64).expand(3, 2, 3)
    base = torch.nn.functional.affine_grid(eye, [3, 1, 40, 50], align_corners=False)
    px = (grid - base) * torch.tensor([50 / 2, 40 / 2], dtype=torch.float64)
    peak = px.abs().flatten(1).amax(1)
    assert torch.allclose(peak, torch.full((3,), 4.0, dtype=torch.float64))
    # smooth: neighbouring pixels move almost alike
    assert float((px[:, 1:] - px[:, :-1]).abs().max()) < 1.0
    off = elastic_grid(2, 8, 8, alpha=4.0, sigma=2.0, p=0.0, generator=g)
    base8 = torch.nn.functional.affine_grid(eye[:2], [2, 1, 8, 8], align_corners=False)
    torch.testing.assert_close(off, base8)


def test_strong_augmentation_keeps_labels_aligned() -> None:
    from segssl.config import AugmentConfig

    cfg = AugmentConfig(
        crop=0,
        rotation=15,
        base_scale=(0.9, 1.1),
        elastic_alpha=3.0,
        elastic_sigma=4.0,
        intensity_jitter=0.0,
    )
    label = torch.zeros(2, 32, 32, dtype=torch.long)
    label[:, 8:24, 10:20] = 2
    image = label[:, None].float()  # the image is the label map: they must stay identical
    out, lab = BaseAugment(cfg)(image, label, generator=torch.Generator().manual_seed(1))
    assert set(lab.unique().tolist()) <= {0, 2}
    assert not torch.equal(lab, label)
    agree = ((out[:, 0] > 1.0) == (lab == 2)).float().mean()
    assert float(agree) > 0.97  # bilinear image and nearest label differ only on the border
