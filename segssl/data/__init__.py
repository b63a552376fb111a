"""Data layer: dataset adapters, preprocessing cache, splits, samplers, synthetic phantoms.

Entry points: :func:`build_data` (what the engine calls), :func:`prepare` (build or reuse a
preprocessed cache), :func:`synthesize` (phantoms in the archives' real layouts).
"""

from __future__ import annotations

from segssl.data.adapters import ADAPTERS, get_adapter, resolve_target
from segssl.data.build import build_data, cache_dir_for
from segssl.data.errors import DataError
from segssl.data.partitions import partition_labels
from segssl.data.preprocess import prepare
from segssl.data.splits import make_split
from segssl.data.synth import synthesize
from segssl.data.types import Batch, DataBundle, ScanRecord, Volume

__all__ = [
    "ADAPTERS",
    "Batch",
    "DataBundle",
    "DataError",
    "ScanRecord",
    "Volume",
    "build_data",
    "cache_dir_for",
    "get_adapter",
    "make_split",
    "partition_labels",
    "prepare",
    "resolve_target",
    "synthesize",
]
