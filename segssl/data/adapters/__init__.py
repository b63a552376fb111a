"""Dataset adapters: one module per archive layout, registered in :data:`ADAPTERS`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segssl.config import did_you_mean
from segssl.data.adapters.acdc import AcdcAdapter
from segssl.data.adapters.base import Adapter, BaseAdapter, RawScan
from segssl.data.adapters.mmwhs import MmwhsCtAdapter, MmwhsMrAdapter
from segssl.data.adapters.msd import MsdAdapter, MsdProstateAdapter, MsdSpleenAdapter
from segssl.data.adapters.promise12 import Promise12Adapter
from segssl.data.errors import DataError

__all__ = [
    "ADAPTERS",
    "Adapter",
    "BaseAdapter",
    "RawScan",
    "check_dataset_name",
    "get_adapter",
    "resolve_target",
]

ADAPTERS: dict[str, type[BaseAdapter]] = {
    "acdc": AcdcAdapter,
    "promise12": Promise12Adapter,
    "msd": MsdAdapter,
    "msd-prostate": MsdProstateAdapter,
    "msd-spleen": MsdSpleenAdapter,
    "mmwhs-ct": MmwhsCtAdapter,
    "mmwhs-mr": MmwhsMrAdapter,
}


def check_dataset_name(name: str) -> type[BaseAdapter]:
    """The adapter class of ``name``.

    Raises:
        DataError: unknown name, with the known names and a "did you mean".
    """
    if name not in ADAPTERS:
        raise DataError(
            f"unknown dataset {name!r}{did_you_mean(name, ADAPTERS)}; "
            f"known datasets: {', '.join(ADAPTERS)}"
        )
    return ADAPTERS[name]


def get_adapter(name: str, root: str | Path, **options: Any) -> Adapter:
    """Instantiate the adapter ``name`` on the archive at ``root``.

    Args:
        name: a key of :data:`ADAPTERS`.
        root: the archive root as shipped (or a synthetic one).
        **options: ``modality`` (index or name) for Decathlon tasks; ignored elsewhere.

    Raises:
        DataError: unknown name, missing root, invalid ``dataset.json`` or modality.
    """
    cls = check_dataset_name(name)
    if issubclass(cls, MsdAdapter):
        return cls(root, modality=options.get("modality", 0))
    return cls(root)


def resolve_target(target: str, class_names: tuple[str, ...]) -> int | None:
    """Class index (1..K) of a binary target, or None for ``"all"`` (case-insensitive).

    Raises:
        DataError: a target that is neither ``all`` nor a class name.
    """
    if target.lower() == "all":
        return None
    lowered = [c.lower() for c in class_names]
    if target.lower() not in lowered:
        raise DataError(
            f"data.target={target!r}: unknown class{did_you_mean(target.lower(), lowered)}; "
            f"expected 'all' or one of {', '.join(lowered)}"
        )
    return lowered.index(target.lower()) + 1
