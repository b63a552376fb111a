"""The one error type of the data layer: bad input named with what was expected."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad data input (missing or unreadable file, wrong shape, unknown label value, impossible
    split, ...). The message names the file, key or value at fault and what was expected."""
