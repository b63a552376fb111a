"""Orchestration: sweep spec -> planned trials (content-addressed keys) -> Ray Tune stages ->
MLflow runs. Imports of Ray and MLflow stay inside the functions that need them."""

from __future__ import annotations

from segssl.orchestrate.plan import Plan, Trial, plan_sweep
from segssl.orchestrate.spec import SpecError, SweepSpec, load_sweep, parse_sweep, spec_hash

__all__ = [
    "Plan",
    "SpecError",
    "SweepSpec",
    "Trial",
    "load_sweep",
    "parse_sweep",
    "plan_sweep",
    "run_sweep",
    "spec_hash",
]


def run_sweep(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - thin lazy re-export
    """See :func:`segssl.orchestrate.runner.run_sweep` (imported lazily)."""
    from segssl.orchestrate.runner import run_sweep as _run

    return _run(*args, **kwargs)
