"""Data checks of a plan, in the driver, before Ray starts or anything is recorded.

A bad ``data.root``, an unknown ``data.dataset`` or a truncated archive file would otherwise be
found by every trial on its own, after the experiment exists and Ray has started, and be retried
in vain. Each distinct data source of the plan (dataset, root, cache, preprocessing, modality) is
resolved once: the adapter exists, the root exists and lists scans, every scan's headers are
readable and consistent, and the labels decode to values of the dataset's label set -- or, when
the source's cache is already complete, its manifest is valid (nothing is decoded then). Each
distinct (source, target, split, labeled count) is then checked like ``build_data`` does: the
target is a class of the dataset, the split can be made with that many labeled scans and, with
``data.partition_sampler``, every unlabeled training scan has at least ``data.partitions``
slices (counted from the manifest or the headers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from segssl.config import DataConfig, RunConfig
from segssl.orchestrate.spec import SpecError

__all__ = ["DataCheckError", "check_plan_data"]


class DataCheckError(SpecError):
    """The plan's data cannot be used (names the sweep file, the stage and the data source)."""


def _source_key(d: DataConfig) -> tuple[Any, ...]:
    return (d.dataset, d.root, d.cache, d.preprocess.model_dump_json(), str(d.modality))


def _check_source(d: DataConfig) -> tuple[Any, list[tuple[str, str]], dict[str, int]]:
    """Resolve one data source; return its adapter, ``(scan_id, subject)`` of every scan and
    how many 2D slices each scan gives (from the cache's manifest, or from the headers)."""
    from pathlib import Path

    from segssl.data import DataError, cache_dir_for, get_adapter
    from segssl.data.adapters.base import squeeze_shape
    from segssl.data.io import read_volume
    from segssl.data.preprocess import slice_count, validate_cache

    if not Path(d.root).is_dir():
        raise DataError(f"data.root={d.root!r}: no such directory (dataset {d.dataset!r})")
    adapter = get_adapter(d.dataset, d.root, modality=d.modality)
    records = adapter.list_scans()
    if not records:
        raise DataError(f"data.root={d.root!r}: no scans found for dataset {d.dataset!r}")
    slices: dict[str, int] = {}
    try:
        manifest = validate_cache(cache_dir_for(d))
        slices = {e["scan_id"]: int(e["slices"]) for e in manifest.get("scans", [])}
        cached = True
    except (DataError, KeyError):
        cached = False
    if not cached:
        for rec in records:
            head = adapter.check(rec)
            if getattr(head, "affine", None) is not None:
                shape = squeeze_shape(head.shape)[:3]
                slices[rec.scan_id] = slice_count(shape, head.affine, d.preprocess)
        for rec in records:
            if rec.label is not None:
                raw, _ = read_volume(rec.label, "label")
                adapter.map_labels(raw, rec.label)
    return adapter, [(r.scan_id, r.subject) for r in records], slices


def _check_partitions(cfg: RunConfig, split: dict[str, Any], slices: dict[str, int]) -> None:
    """With the partition sampler, every unlabeled training scan needs at least S slices (the
    sampler's own check, before any trial starts).

    Raises:
        DataError: naming ``data.partitions`` and the short scans with their slice counts.
    """
    from segssl.data import DataError
    from segssl.methods import get_method

    d = cfg.data
    if not d.partition_sampler or not get_method(cfg.method.name).uses_unlabeled:
        return
    short = [
        f"{s} ({slices[s]} slices)"
        for s in split["unlabeled"]
        if s in slices and slices[s] < d.partitions
    ]
    if short:
        raise DataError(
            f"data.partitions={d.partitions}: scans {short[:5]} have fewer slices than "
            "partitions, so some partitions would be empty"
        )


def check_plan_data(
    configs: Iterable[tuple[str, RunConfig]],
    source: str,
    log: Callable[[str], None] | None = None,
) -> int:
    """Check the data of every planned trial config; return the number of sources checked.

    Args:
        configs: ``(stage, resolved run config)`` of the planned trials (and search probes).
        source: the sweep file (for messages).
        log: progress lines (one per source).

    Raises:
        DataCheckError: naming the sweep file, the stage, the source and the data error.
    """
    from segssl.data import DataError, resolve_target
    from segssl.data.splits import make_split

    sources: dict[tuple[Any, ...], tuple[Any, list[tuple[str, str]], dict[str, int]]] = {}
    done: set[tuple[Any, ...]] = set()
    for stage, cfg in configs:
        d = cfg.data
        key = _source_key(d)
        where = f"{source}: stages.{stage}: data (dataset {d.dataset!r}, root {d.root!r})"
        try:
            if key not in sources:
                if log is not None:
                    log(f"checking data {d.dataset} at {d.root}")
                sources[key] = _check_source(d)
            adapter, scans, slices = sources[key]
            use = (key, d.target, d.split.model_dump_json(), str(d.labeled_scans))
            use += (d.partitions if d.partition_sampler else 0, cfg.method.name)
            if use in done:
                continue
            resolve_target(d.target, adapter.class_names)
            split = make_split(scans, d.split, d.labeled_scans, d.dataset)
            _check_partitions(cfg, split, slices)
            done.add(use)
        except DataError as exc:
            raise DataCheckError(f"{where}: {exc}") from None
    return len(sources)
