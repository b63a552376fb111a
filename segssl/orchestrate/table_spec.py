"""Moved to :mod:`segssl.table_spec` (the report and the orchestrator both depend on it, so it
lives below both); this alias keeps old imports working."""

from segssl.table_spec import *  # noqa: F403
from segssl.table_spec import __all__  # noqa: F401
