"""``build_data``: the one entry point the engine calls to get a run's data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from segssl.config import DataConfig
from segssl.data.adapters import get_adapter, resolve_target
from segssl.data.errors import DataError
from segssl.data.preprocess import open_scan, prepare_records
from segssl.data.samplers import (
    PartitionBatchSampler,
    RandomBatchSampler,
    SliceDataset,
    make_loader,
)
from segssl.data.splits import make_split, save_split
from segssl.data.types import DataBundle, Volume

__all__ = ["build_data", "cache_dir_for"]

# sampling streams, mixed with the run seed
_LABELED, _UNLABELED = 1, 2


def cache_dir_for(cfg: DataConfig) -> Path:
    """Where ``build_data`` keeps the cache of ``cfg``.

    ``data.cache`` (default ``<root>/.segssl-cache``) is a cache *root* holding one prepared
    cache per dataset, archive root and settings (``<dataset>-<hash>``), so trials with
    different preprocessing or different archives of one dataset (a shared ``data.cache``)
    never rebuild each other's cache under a running loader. When ``data.cache`` itself holds a
    ``manifest.json`` (a cache made by ``segssl data prepare --out``), it is used as is: rebuilt
    there if its sources changed, but never for another dataset or other settings (see
    :func:`_check_prepared_cache`).
    """
    from segssl.config import config_hash

    base = Path(cfg.cache) if cfg.cache else Path(cfg.root) / ".segssl-cache"
    if (base / "manifest.json").is_file():
        return base
    root = str(Path(cfg.root).resolve())
    key = config_hash(
        {"settings": cfg.preprocess, "modality": cfg.modality, "root": root}, length=12
    )
    return base / f"{cfg.dataset}-{key}"


def _check_prepared_cache(cfg: DataConfig, cache: Path, channel: int | None) -> None:
    """A cache prepared with ``segssl data prepare`` is never rebuilt for other settings.

    Rebuilding it in place would overwrite the user's cache and, with several runs sharing it,
    swap scan files under another run's running loader.

    Raises:
        DataError: the cache holds another dataset, or was prepared with other settings; names
            every differing key.
    """
    from segssl.data.preprocess import load_manifest

    if not cfg.cache or Path(cfg.cache) != cache or not (cache / "manifest.json").is_file():
        return
    try:
        m = load_manifest(cache)
    except DataError:
        return  # unreadable manifest: an incomplete cache, rebuilt as such
    wanted = cfg.preprocess.model_dump(mode="json")
    diffs = [
        f"data.preprocess.{k}={wanted[k]!r} (cache: {m.get('settings', {}).get(k)!r})"
        for k in sorted(wanted)
        if m.get("settings", {}).get(k) != wanted[k]
    ]
    if m.get("dataset") != cfg.dataset:
        diffs.insert(0, f"data.dataset={cfg.dataset!r} (cache: {m.get('dataset')!r})")
    if m.get("adapter", {}).get("channel", channel) != channel:
        diffs.append(f"data.modality={cfg.modality!r} (cache: channel {m['adapter']['channel']})")
    if diffs:
        raise DataError(
            f"data.cache={cfg.cache!r} is a cache prepared for other data: "
            + "; ".join(diffs)
            + ". Prepare one with these settings elsewhere, or set data.cache to a cache root "
            "(a folder without manifest.json) that holds one cache per setting"
        )


def _lut(num_classes: int, target: int | None) -> np.ndarray:
    if target is None:
        return np.arange(num_classes + 1, dtype=np.int64)
    lut = np.zeros(num_classes + 1, dtype=np.int64)
    lut[target] = 1
    return lut


def _open_dataset(cfg: DataConfig) -> tuple[Any, int | None, list]:
    """The adapter, resolved target and scan records of ``cfg`` (root, dataset, target checked)."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root!r}: no such directory (dataset {cfg.dataset!r})")
    adapter = get_adapter(cfg.dataset, root, modality=cfg.modality)
    target = resolve_target(cfg.target, adapter.class_names)
    return adapter, target, adapter.list_scans()


def _check_sampler(cfg: DataConfig, unlabeled: bool) -> None:
    """A partition-sampler batch holds at least one slice per partition (a batch that is not a
    multiple of S takes a random subset of its last volume's partitions)."""
    if unlabeled and cfg.partition_sampler and cfg.unlabeled_batch_size < cfg.partitions:
        raise DataError(
            f"data.unlabeled_batch_size={cfg.unlabeled_batch_size} must be at least "
            f"data.partitions={cfg.partitions} with data.partition_sampler"
        )


def _stream(
    cfg: DataConfig,
    cache: Path,
    entries: dict[str, dict],
    lut: np.ndarray,
    ids: list[str],
    *,
    with_labels: bool,
    batch: int,
    partition: bool,
    seed: int,
    which: int,
) -> tuple[Any, Any]:
    """An endless batch iterator over the slices of ``ids``, and its ``close``."""
    ds = SliceDataset(
        [cache / entries[i]["file"] for i in ids],
        ids,
        [entries[i]["slices"] for i in ids],
        cfg.partitions,
        lut,
        with_labels,
    )
    if partition:
        sampler: Any = PartitionBatchSampler(ds, batch, cfg.partitions, seed, which)
    else:
        sampler = RandomBatchSampler(len(ds), batch, seed, which)
    return make_loader(ds, sampler, cfg.num_workers)


def _volumes(
    cache: Path, entries: dict[str, dict], lut: np.ndarray, ids: list[str]
) -> list[Volume]:
    """Whole validation/test volumes (float32 images, labels through the class table)."""
    out = []
    for i in ids:
        arr = open_scan(cache, entries[i], mmap=True)
        out.append(
            Volume(
                scan_id=i,
                subject=entries[i]["subject"],
                image=torch.from_numpy(np.array(arr["image"])).float().numpy(),
                label=np.take(lut, np.asarray(arr["label"])),
                spacing=tuple(entries[i]["spacing"]),
            )
        )
    return out


def build_data(
    cfg: DataConfig,
    *,
    seed: int,
    labeled: bool,
    unlabeled: bool,
    workdir: Path | None = None,
) -> DataBundle:
    """Prepare (or reuse) the cache, split, and return the run's streams and volumes.

    Everything is validated before any heavy work: the root exists, the dataset and target are
    known, the split can be made and the labeled count fits the training set, batch sizes fit the
    partition sampler. The split ordering depends on ``cfg.split.seed`` only (the same labeled
    scans for every run seed); batch sampling is seeded by ``seed``.

    Args:
        cfg: the run's data section.
        seed: the run seed (batch sampling).
        labeled: build the labeled stream (batches with labels from the labeled scans).
        unlabeled: build the unlabeled stream (all training scans, no labels).
        workdir: if given, the split manifest is written to ``workdir/split.json``.

    Returns:
        A :class:`DataBundle`; its ``close()`` stops loader workers.

    Raises:
        DataError: any bad input, with the file/key/value and what was expected.
    """
    adapter, target, records = _open_dataset(cfg)
    split = make_split(
        [(r.scan_id, r.subject) for r in records], cfg.split, cfg.labeled_scans, cfg.dataset
    )
    _check_sampler(cfg, unlabeled)
    cache = cache_dir_for(cfg)
    _check_prepared_cache(cfg, cache, adapter.options().get("channel"))
    manifest = prepare_records(adapter, records, cache, cfg.preprocess)
    entries = {s["scan_id"]: s for s in manifest["scans"]}
    split["data_fingerprint"] = manifest["fingerprint"]
    split_path = save_split(split, Path(workdir) / "split.json") if workdir is not None else None

    class_names = (
        tuple(adapter.class_names) if target is None else (adapter.class_names[target - 1],)
    )
    lut = _lut(len(adapter.class_names), target)
    closers: list[Any] = []

    def stream(ids: list[str], **kw: Any) -> Any:
        it, close = _stream(cfg, cache, entries, lut, ids, seed=seed, **kw)
        closers.append(close)
        return it

    lab_it = (
        stream(
            split["labeled"],
            with_labels=True,
            batch=cfg.batch_size,
            partition=False,
            which=_LABELED,
        )
        if labeled
        else None
    )
    unl_it = (
        stream(
            split["unlabeled"],
            with_labels=False,
            batch=cfg.unlabeled_batch_size,
            partition=cfg.partition_sampler,
            which=_UNLABELED,
        )
        if unlabeled
        else None
    )

    def close() -> None:
        for c in closers:
            c()

    return DataBundle(
        class_names=class_names,
        labeled=lab_it,
        unlabeled=unl_it,
        val=_volumes(cache, entries, lut, split["val"]),
        test=_volumes(cache, entries, lut, split["test"]),
        split=split,
        data_fingerprint=manifest["fingerprint"],
        split_fingerprint=split["fingerprint"],
        split_path=split_path,
        close=close,
    )
