"""Data layer: dataset adapters, preprocessing cache, splits, samplers, synthetic phantoms.

Entry points: :func:`build_data` (what the engine calls), :func:`prepare` (build or reuse a
preprocessed cache), :func:`synthesize` (phantoms in the archives' real layouts).
"""

from __future__ import annotations

from segssl.data.errors import DataError
from segssl.data.synth import synthesize

__all__ = ["DataError", "synthesize"]
