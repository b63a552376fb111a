"""Shape and argument checks shared by the loss functions (errors name both shapes)."""

from __future__ import annotations

from torch import Tensor


def same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` naming both shapes unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {name_a} {tuple(a.shape)} "
            f"and {name_b} {tuple(b.shape)}"
        )


def check_ndim(x: Tensor, name: str, allowed: tuple[int, ...], layout: str) -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``allowed`` (``layout`` is the doc)."""
    if x.ndim not in allowed:
        raise ValueError(f"{name} must be {layout}, got shape {tuple(x.shape)}")


def check_clusters(x: Tensor, name: str, dim: int = 1) -> int:
    """Return the number of clusters/classes along ``dim``; it must be at least 2."""
    k = int(x.shape[dim])
    if k < 2:
        raise ValueError(
            f"{name} must have at least 2 clusters/classes along dim {dim}, got K={k} "
            f"(shape {tuple(x.shape)})"
        )
    return k


def check_unit_interval(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``0 <= value <= 1``."""
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def check_non_negative(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value >= 0``."""
    if not float(value) >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_positive(value: float, name: str) -> None:
    """Raise ``ValueError`` unless ``value > 0``."""
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
