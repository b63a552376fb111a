"""Augmentation on tensors: the paired transform T of the MI losses and the base augmentations.

**Paired transform** (BIM paper, App. F). :class:`PairedTransform` samples ONE random state
(:class:`TransformState`) per batch element: a gamma in ``cfg.gamma`` and an affine map (scale in
``cfg.scale``, rotation in ``+-cfg.paired_rotation`` degrees, translation in
``+-cfg.translation`` of the image side, optionally a horizontal flip). The state applies

* to the image batch: gamma correction, then the affine warp (:meth:`TransformState.image`),
* to feature maps or logits of ANY resolution and channel count: the affine warp only
  (:meth:`TransformState.geometry`), so that ``T(s(x))`` and ``s(T(x))`` can be compared,
* to label maps with nearest interpolation (:meth:`TransformState.labels`).

The affine map is defined in normalised coordinates (``align_corners=False``: the map spans
[-1, 1] along each axis), with the aspect ratio restored before rotating so that rotations do
not shear non-square maps. The same state therefore gives the same continuous transformation at
every resolution of one aspect ratio: warping a 2x down-sampled map equals down-sampling the warped
map up to interpolation error. Warping is rising's ``affine_image_transform`` (``affine_grid`` +
``grid_sample``), zero padding outside the image.

Gamma correction is ``x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma`` with ``lo, hi`` the
per-image minimum and maximum (rising's ``gamma_correction`` on the min-max normalised image), so
images with negative values after percentile normalisation are safe.

**Base augmentations** (:class:`BaseAugment`): the papers' training augmentations, applied
jointly to an image batch and its label batch: random rotation in ``+-cfg.rotation`` degrees,
random horizontal flip, random crop ``cfg.crop`` (0 disables), and brightness/contrast jitter of
amplitude ``cfg.intensity_jitter`` on the image only.

All randomness comes from a ``torch.Generator`` (CPU) passed in by the caller; parameters are
drawn on the CPU and moved to the input's device, so CPU and CUDA runs draw identical states.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from rising.transforms.functional.affine import affine_image_transform
from rising.transforms.functional.intensity import gamma_correction
from torch import Tensor

from segssl.config import AugmentConfig

__all__ = [
    "BaseAugment",
    "PairedTransform",
    "TransformState",
    "affine_theta",
    "dense_correspondence",
    "elastic_grid",
    "make_generator",
]


def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (the source of every random draw here)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64) * (high - low) + low


def _check_image(x: Tensor, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) tensor, got shape {tuple(x.shape)}")


def affine_theta(
    scale: Tensor,
    angle: Tensor,
    shift: Tensor,
    flip: Tensor,
    height: int,
    width: int,
    vflip: Tensor | None = None,
) -> Tensor:
    """Sampling matrices for ``affine_grid`` of the map ``out = A @ in + b`` (physical coords).

    The forward map acts on aspect-corrected normalised coordinates ``u = (x * W/m, y * H/m)``
    with ``(x, y)`` in [-1, 1] (``align_corners=False``) and ``m = max(H, W)``:
    ``A = scale * R(angle) * diag(flip, vflip)``, ``b = 2 * shift * (W/m, H/m)`` (so a shift of 0.1
    moves by 10 % of the side). Returned is its inverse in normalised coordinates, as
    ``affine_grid`` expects (output position -> input position). It depends on the aspect ratio
    only, never on the resolution.

    Args:
        scale: ``(B,)`` scale factors (> 1 enlarges the content).
        angle: ``(B,)`` rotation angles in radians (counter-clockwise on screen axes).
        shift: ``(B, 2)`` translations as fractions of the side, (x, y).
        flip: ``(B,)`` booleans: mirror horizontally before rotating.
        height: map height (pixels).
        width: map width (pixels).
        vflip: optional ``(B,)`` booleans: mirror vertically before rotating.

    Returns:
        ``(B, 2, 3)`` float64 matrices.
    """
    m = float(max(height, width))
    d = torch.tensor([width / m, height / m], dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B,2,2)
    mirror = torch.ones(len(scale), 2, dtype=torch.float64)
    mirror[:, 0] = torch.where(flip.bool(), -1.0, 1.0)
    if vflip is not None:
        mirror[:, 1] = torch.where(vflip.bool(), -1.0, 1.0)
    a = scale.view(-1, 1, 1) * rot * mirror.view(-1, 1, 2)
    b = 2.0 * shift * d  # physical coordinates
    a_inv = torch.linalg.inv(a)
    # normalised -> physical: u = D x ; inverse map in normalised coords: x_in = D^-1 A^-1 (D x - b)
    dm = torch.diag(d)
    dm_inv = torch.diag(1.0 / d)
    lin = dm_inv @ a_inv @ dm
    off = -(dm_inv @ (a_inv @ b.unsqueeze(-1))).squeeze(-1)
    return torch.cat([lin, off.unsqueeze(-1)], dim=-1)


@dataclass(frozen=True)
class TransformState:
    """One sampled paired transform for a batch of ``B`` images (see module docstring).

    Attributes:
        gamma: ``(B,)`` gamma exponents (1 = identity).
        scale: ``(B,)`` scale factors.
        angle: ``(B,)`` rotation angles (radians).
        shift: ``(B, 2)`` translations as fractions of the side (x, y).
        flip: ``(B,)`` horizontal flips (bool).
        vflip: ``(B,)`` vertical flips (bool), or None (none).
    """

    gamma: Tensor
    scale: Tensor
    angle: Tensor
    shift: Tensor
    flip: Tensor
    vflip: Tensor | None = None

    @property
    def batch_size(self) -> int:
        """Number of batch elements the state was sampled for."""
        return int(self.gamma.shape[0])

    def _check(self, x: Tensor, name: str) -> None:
        _check_image(x, name)
        if x.shape[0] != self.batch_size:
            raise ValueError(
                f"{name} has batch size {x.shape[0]} (shape {tuple(x.shape)}) but the transform "
                f"state was sampled for batch size {self.batch_size}"
            )

    def theta(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """``(B, 2, 3)`` sampling matrices for a map of this size (see :func:`affine_theta`)."""
        th = affine_theta(self.scale, self.angle, self.shift, self.flip, height, width, self.vflip)
        return th.to(device=device, dtype=dtype)

    def intensity(self, image: Tensor) -> Tensor:
        """Gamma correction only (per-image min-max normalised, mapped back to the same range).

        Args:
            image: ``(B, C, H, W)`` float images.

        Returns:
            Same shape and range.
        """
        self._check(image, "image")
        dims = tuple(range(1, image.ndim))
        lo = image.amin(dim=dims, keepdim=True)
        hi = image.amax(dim=dims, keepdim=True)
        span = (hi - lo).clamp_min(1e-8)
        unit = ((image - lo) / span).clamp(0.0, 1.0)
        gamma = self.gamma.to(device=image.device, dtype=image.dtype).view(-1, 1, 1, 1)
        return lo + span * gamma_correction(unit, gamma)

    def geometry(self, x: Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> Tensor:
        """Affine warp only, for feature maps, logits or probabilities of any size and channels.

        Args:
            x: ``(B, C, H, W)`` float tensor.
            mode: ``"bilinear"`` or ``"nearest"``.
            padding_mode: value outside the map (``"zeros"``, ``"border"``, ``"reflection"``).

        Returns:
            ``(B, C, H, W)`` warped tensor (same dtype and device).
        """
        self._check(x, "x")
        if not x.dtype.is_floating_point:
            raise ValueError(f"geometry() needs a float tensor, got {x.dtype}; use labels()")
        theta = self.theta(x.shape[2], x.shape[3], x.device, x.dtype)
        return affine_image_transform(
            x, theta, interpolation_mode=mode, padding_mode=padding_mode, align_corners=False
        )

    def image(self, image: Tensor) -> Tensor:
        """The full T on images: gamma correction, then the affine warp (bilinear)."""
        return self.geometry(self.intensity(image))

    def labels(self, labels: Tensor, fill: int = 0) -> Tensor:
        """Warp integer labels ``(B, H, W)`` with nearest interpolation; outside -> ``fill``."""
        if labels.ndim != 3:
            raise ValueError(f"labels must be (B, H, W), got shape {tuple(labels.shape)}")
        x = (labels.to(torch.float32) - fill).unsqueeze(1)
        warped = self.geometry(x, mode="nearest").squeeze(1) + fill
        return warped.round().to(labels.dtype)

    def valid_mask(self, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """``(B, 1, H, W)`` float mask: 1 where the warped map has content from inside the image."""
        ones = torch.ones(self.batch_size, 1, height, width, device=device)
        return (self.geometry(ones) > 0.5).to(ones.dtype)


def _homogeneous(theta: Tensor) -> Tensor:
    """``(B, 3, 3)`` from ``(B, 2, 3)`` affine matrices."""
    last = torch.zeros(theta.shape[0], 1, 3, dtype=theta.dtype, device=theta.device)
    last[:, 0, 2] = 1.0
    return torch.cat([theta, last], dim=1)


def dense_correspondence(
    theta_q: Tensor, theta_k: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor]:
    """Which location of view k shows the same point as each location of view q.

    The views are ``q(p) = x(theta_q p)`` and ``k(p) = x(theta_k p)`` (``affine_grid``
    convention: ``theta`` maps normalised output coordinates to input coordinates, pixel centres
    at ``align_corners=False``), so location ``p`` of view q corresponds to
    ``theta_k^-1 theta_q p`` in view k; it is rounded to the nearest location of the
    ``height x width`` grid (feature maps of any resolution with the image's aspect ratio).

    Args:
        theta_q: ``(B, 2, 3)`` sampling matrices of view q (e.g. ``TransformState.theta``).
        theta_k: ``(B, 2, 3)`` of view k (identity rows ``[[1, 0, 0], [0, 1, 0]]`` for a view
            without geometric change).
        height: rows of the grid.
        width: columns of the grid.

    Returns:
        ``(match, valid)``: ``(B, H*W)`` int64 flat index into view k's grid (0 where invalid),
        ``(B, H*W)`` bool, true where the corresponding point lies inside view k's grid; on
        the device of the thetas.
    """
    if theta_q.shape != theta_k.shape or theta_q.ndim != 3 or tuple(theta_q.shape[1:]) != (2, 3):
        raise ValueError(
            f"theta_q and theta_k must both be (B, 2, 3), got {tuple(theta_q.shape)} and "
            f"{tuple(theta_k.shape)}"
        )
    t = torch.linalg.inv(_homogeneous(theta_k.double())) @ _homogeneous(theta_q.double())
    dev = t.device
    ys = (2 * torch.arange(height, dtype=torch.float64, device=dev) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=torch.float64, device=dev) + 1) / width - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    ones = torch.ones(height * width, dtype=torch.float64, device=dev)
    mapped = t @ torch.stack([gx.flatten(), gy.flatten(), ones])  # (B, 3, P): (x, y, 1) in k
    col = torch.round(((mapped[:, 0] + 1) * width - 1) / 2)
    row = torch.round(((mapped[:, 1] + 1) * height - 1) / 2)
    valid = (col >= 0) & (col <= width - 1) & (row >= 0) & (row <= height - 1)
    match = torch.where(valid, row * width + col, torch.zeros_like(col)).long()
    return match, valid


class PairedTransform:
    """Sampler of the paired transform T (BIM App. F): gamma correction and a random affine map.

    Args:
        gamma: range of the gamma exponent (0.5, 2.0).
        scale: range of the scale factor (0.8, 1.3).
        rotation: maximum absolute rotation in degrees (45).
        translation: maximum absolute translation as a fraction of the side (0.1).
        flip: also flip horizontally with probability 0.5 (off in the BIM paper's T).
        vflip: also flip vertically with probability 0.5 (the GMI paper's T is random
            horizontal and vertical flips: ``rotation=0``, ``scale=(1, 1)``, ``gamma=(1, 1)``,
            ``translation=0``, ``flip=vflip=True``).
    """

    def __init__(
        self,
        gamma: tuple[float, float] = (0.5, 2.0),
        scale: tuple[float, float] = (0.8, 1.3),
        rotation: float = 45.0,
        translation: float = 0.1,
        flip: bool = False,
        vflip: bool = False,
    ) -> None:
        for name, rng in (("gamma", gamma), ("scale", scale)):
            if len(rng) != 2 or not 0 < rng[0] <= rng[1]:
                raise ValueError(
                    f"{name} must be a range (low, high) with 0 < low <= high, got {rng}"
                )
        if not 0 <= rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
        if not 0 <= translation <= 0.5:
            raise ValueError(f"translation must be in [0, 0.5] of the side, got {translation}")
        self.gamma = (float(gamma[0]), float(gamma[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.rotation = float(rotation)
        self.translation = float(translation)
        self.flip = bool(flip)
        self.vflip = bool(vflip)

    @classmethod
    def from_config(cls, cfg: AugmentConfig) -> PairedTransform:
        """Build from the ``augment`` section (``gamma``, ``scale``, ``paired_rotation``, ...)."""
        return cls(
            gamma=cfg.gamma,
            scale=cfg.scale,
            rotation=cfg.paired_rotation,
            translation=cfg.translation,
            flip=cfg.paired_flip,
            vflip=cfg.paired_vflip,
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> TransformState:
        """Draw one state per batch element from ``generator`` (CPU)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = batch_size
        # uniform in the range, as rising's GammaCorrection samples it (the authors' T)
        gamma = _uniform(n, self.gamma[0], self.gamma[1], generator)
        scale = _uniform(n, self.scale[0], self.scale[1], generator)
        angle = _uniform(n, -self.rotation, self.rotation, generator) * (math.pi / 180.0)
        shift = _uniform(2 * n, -self.translation, self.translation, generator).view(n, 2)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n).bool()
        # drawn only when enabled, so the BIM T's random stream is unchanged
        vflip = torch.rand(n, generator=generator) < 0.5 if self.vflip else None
        return TransformState(gamma, scale, angle, shift, flip, vflip)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of ``(N, 1, H, W)`` maps (zero padding), std in pixels."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1), padding=(0, radius))
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1), padding=(radius, 0))


def elastic_grid(
    b: int,
    height: int,
    width: int,
    alpha: float,
    sigma: float,
    p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """Sampling grid ``(B, H, W, 2)`` of a random elastic deformation (Simard et al., 2003).

    Uniform noise in [-1, 1] per pixel and axis, smoothed by a Gaussian of ``sigma`` pixels,
    scaled so that its largest displacement is ``alpha`` pixels; each image is deformed with
    probability ``p`` (identity otherwise). Drawn on the CPU from ``generator``.
    """
    noise = torch.rand(b * 2, 1, height, width, generator=generator, dtype=torch.float64) * 2 - 1
    field = _gaussian_blur(noise, sigma).view(b, 2, height, width)
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    on = (torch.rand(b, generator=generator, dtype=torch.float64) < p).view(b, 1, 1, 1)
    disp = alpha * field * on  # pixels, (dx, dy)
    scale = torch.tensor([2.0 / width, 2.0 / height], dtype=torch.float64).view(1, 2, 1, 1)
    eye = torch.eye(2, 3, dtype=torch.float64).expand(b, 2, 3)
    base = torch.nn.functional.affine_grid(eye, [b, 1, height, width], align_corners=False)
    return base + (disp * scale).permute(0, 2, 3, 1)


class BaseAugment:
    """The papers' base training augmentations, applied jointly to images and labels.

    Order: rotation in ``+-cfg.rotation`` degrees, scaling in ``cfg.base_scale`` and horizontal
    flip (``cfg.flip``) on the full slice (bilinear for images, nearest for labels, zero /
    background padding), an elastic deformation when ``cfg.elastic_alpha > 0``, then a random
    ``cfg.crop`` x ``cfg.crop`` crop (0 keeps the full slice), then brightness and contrast
    jitter on the image: ``x -> b * ((x - mean) * c + mean)`` with ``b, c`` uniform in
    ``[1 - j, 1 + j]``, ``j = cfg.intensity_jitter`` (Pillow's ColorJitter semantics on tensors).

    Args:
        cfg: the ``augment`` config section.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(
        self,
        image: Tensor,
        label: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Augment a batch.

        Args:
            image: ``(B, C, H, W)`` float images.
            label: optional ``(B, H, W)`` integer labels aligned with ``image``.
            generator: CPU generator for every random draw.

        Returns:
            ``(image, label)``, spatial size ``cfg.crop`` (or unchanged when ``cfg.crop`` is 0).

        Raises:
            ValueError: on bad shapes, or a crop larger than the image.
        """
        _check_image(image, "image")
        b, _, h, w = image.shape
        if label is not None and (label.ndim != 3 or label.shape != (b, h, w)):
            raise ValueError(
                f"label must be (B, H, W) matching image (B, C, H, W), got image "
                f"{tuple(image.shape)} and label {tuple(label.shape)}"
            )
        crop = self.cfg.crop
        if crop and crop > min(h, w):
            raise ValueError(
                f"augment.crop={crop} is larger than the image {h}x{w} (shape {tuple(image.shape)})"
            )
        rot = self.cfg.rotation
        lo, hi = self.cfg.base_scale
        if rot > 0 or self.cfg.flip or (lo, hi) != (1.0, 1.0):
            state = TransformState(
                gamma=torch.ones(b, dtype=torch.float64),
                scale=torch.ones(b, dtype=torch.float64)
                if (lo, hi) == (1.0, 1.0)
                else _uniform(b, lo, hi, generator),
                angle=_uniform(b, -rot, rot, generator) * (math.pi / 180.0),
                shift=torch.zeros(b, 2, dtype=torch.float64),
                flip=(torch.rand(b, generator=generator) < 0.5)
                if self.cfg.flip
                else torch.zeros(b, dtype=torch.bool),
            )
            image = state.geometry(image)
            if label is not None:
                label = state.labels(label)
        if self.cfg.elastic_alpha > 0:
            image, label = self._elastic(image, label, generator)
        if crop:
            ys = torch.randint(0, h - crop + 1, (b,), generator=generator).tolist()
            xs = torch.randint(0, w - crop + 1, (b,), generator=generator).tolist()
            corners = list(enumerate(zip(ys, xs, strict=True)))
            image = torch.stack([image[i, :, y : y + crop, x : x + crop] for i, (y, x) in corners])
            if label is not None:
                label = torch.stack([label[i, y : y + crop, x : x + crop] for i, (y, x) in corners])
        j = self.cfg.intensity_jitter
        if j > 0:
            bright = _uniform(b, 1 - j, 1 + j, generator).to(image).view(-1, 1, 1, 1)
            contrast = _uniform(b, 1 - j, 1 + j, generator).to(image).view(-1, 1, 1, 1)
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            # brightness scales the whole image (Pillow blends with black), contrast blends
            # with the mean: b * ((x - mean) * c + mean)
            image = bright * ((image - mean) * contrast + mean)
        return image.contiguous(), None if label is None else label.contiguous()

    def _elastic(
        self, image: Tensor, label: Tensor | None, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None]:
        cfg = self.cfg
        b, _, h, w = image.shape
        grid = elastic_grid(b, h, w, cfg.elastic_alpha, cfg.elastic_sigma, cfg.elastic_p, generator)
        grid = grid.to(device=image.device, dtype=image.dtype)
        gs = torch.nn.functional.grid_sample
        image = gs(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if label is not None:
            lab = gs(label[:, None].to(image.dtype), grid, mode="nearest", align_corners=False)
            label = lab[:, 0].round().to(label.dtype)
        return image, label
