"""segssl: self- and semi-supervised medical image segmentation, from a sweep YAML to tables."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("segssl")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
