"""segssl: self- and semi-supervised medical image segmentation, from a sweep YAML to tables."""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    """``__version__`` is read from the installed metadata on first use (importing
    ``importlib.metadata`` costs a noticeable part of ``segssl --help``)."""
    if name != "__version__":
        raise AttributeError(f"module 'segssl' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("segssl")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0.0.0+unknown"
