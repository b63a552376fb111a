"""The one error type of the report layer."""

from __future__ import annotations


class ReportError(ValueError):
    """A table cannot be built: the message names the table, key, file or value at fault."""
