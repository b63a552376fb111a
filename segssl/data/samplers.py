"""Slice datasets over the memory-mapped cache, endless seeded batch samplers, loaders.

An epoch is a fixed number of iterations (the engine's business); here every stream is endless.
Batches are drawn with replacement. Indices are drawn in the main process from a
``numpy.random.Generator`` seeded by ``(run seed, stream)``, so a run is reproducible whatever
``num_workers`` is; workers only read slices from the memory-mapped cache files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segssl.data.errors import DataError
from segssl.data.partitions import partition_labels

__all__ = [
    "PartitionBatchSampler",
    "RandomBatchSampler",
    "SliceDataset",
    "make_loader",
]


class SliceDataset(Dataset):
    """2D slices of cached scans as batch items.

    Items are dicts: ``image`` ``(1, H, W)`` float32; ``label`` ``(H, W)`` int64 (only when
    ``with_labels``); ``partition``, ``slice_index`` int64; ``scan`` str.

    Args:
        files: cache file of each scan (structured ``.npy`` with ``image`` / ``label`` fields).
        scan_ids: id of each scan.
        slices: slice count of each scan.
        partitions: S, the number of partitions per volume for the meta-labels.
        lut: class-index lookup applied to labels (identity for all classes; 0/1 for a binary
            target).
        with_labels: whether items carry labels.
    """

    def __init__(
        self,
        files: Sequence[Path],
        scan_ids: Sequence[str],
        slices: Sequence[int],
        partitions: int,
        lut: np.ndarray,
        with_labels: bool,
    ) -> None:
        self.files = [str(f) for f in files]
        self.scan_ids = list(scan_ids)
        self.slices = [int(s) for s in slices]
        self.lut = np.asarray(lut, dtype=np.int64)
        self.identity = bool(np.array_equal(self.lut, np.arange(len(self.lut))))
        self.with_labels = with_labels
        self.scan_of = np.repeat(np.arange(len(self.files)), self.slices)
        self.slice_of = np.concatenate([np.arange(n) for n in self.slices]).astype(np.int64)
        self.partition_of = np.concatenate(
            [partition_labels(n, partitions) for n in self.slices]
        ).astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.slices)]).astype(np.int64)
        self._arrays: dict[int, np.ndarray] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _array(self, scan: int) -> np.ndarray:
        if self._pid != os.getpid():  # a worker process: open its own maps
            self._arrays, self._pid = {}, os.getpid()
        arr = self._arrays.get(scan)
        if arr is None:
            arr = np.load(self.files[scan], mmap_mode="r")
            self._arrays[scan] = arr
        return arr

    def __getitem__(self, index: int) -> dict[str, Any]:
        scan = int(self.scan_of[index])
        z = int(self.slice_of[index])
        record = self._array(scan)[z]
        # torch converts float16 -> float32 an order of magnitude faster than numpy
        image = torch.from_numpy(np.array(record["image"])).float()[None]
        item: dict[str, Any] = {
            "image": image,
            "partition": torch.tensor(self.partition_of[index]),
            "slice_index": torch.tensor(z),
            "scan": self.scan_ids[scan],
        }
        if self.with_labels:
            label = np.asarray(record["label"])
            if self.identity:
                item["label"] = torch.from_numpy(label.astype(np.int64))
            else:
                item["label"] = torch.from_numpy(np.take(self.lut, label))
        return item


class RandomBatchSampler:
    """Endless batches of ``batch_size`` slice indices drawn uniformly with replacement."""

    def __init__(self, num_items: int, batch_size: int, seed: int, stream: int) -> None:
        if num_items < 1:
            raise DataError("cannot sample batches from an empty set of slices")
        self.num_items = num_items
        self.batch_size = batch_size
        self.rng = np.random.default_rng([seed, stream])

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.rng.integers(0, self.num_items, self.batch_size).tolist()


class PartitionBatchSampler:
    """Chaitanya's G^D batches: m volumes, one slice drawn from each of their S partitions.

    A batch of ``batch_size`` indices is ordered volume by volume, partition 0..S-1 within each
    volume; ``m = ceil(batch_size / S)``. When ``batch_size`` is not a multiple of S (the paper's
    batch of 40 with S = 3 or 6, Table 5; batches of 250 and 450 with S = 4, Table 4), the last
    volume contributes ``batch_size - (m - 1) * S`` of its partitions, drawn at random. Volumes
    are drawn without replacement within a batch when there are at least m of them (with
    replacement otherwise); batches are independent (with replacement across batches).

    Raises:
        DataError: a volume with fewer than S slices (named), or a batch smaller than S.
    """

    def __init__(
        self, dataset: SliceDataset, batch_size: int, partitions: int, seed: int, stream: int
    ) -> None:
        if batch_size < partitions:
            raise DataError(
                f"data.unlabeled_batch_size={batch_size} must be at least "
                f"data.partitions={partitions} with data.partition_sampler"
            )
        short = [
            f"{s} ({n} slices)"
            for s, n in zip(dataset.scan_ids, dataset.slices, strict=True)
            if n < partitions
        ]
        if short:
            raise DataError(
                f"data.partitions={partitions}: scans {short[:5]} have fewer slices than "
                "partitions, so some partitions would be empty"
            )
        self.m = -(-batch_size // partitions)
        self.last = batch_size - (self.m - 1) * partitions
        self.partitions = partitions
        self.ds = dataset
        self.rng = np.random.default_rng([seed, stream])
        # for each volume and partition: the global indices of its slices
        self.members = [
            [
                dataset.offsets[v] + np.flatnonzero(partition_labels(n, partitions) == s)
                for s in range(partitions)
            ]
            for v, n in enumerate(dataset.slices)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        n_vol = len(self.members)
        while True:
            vols = self.rng.choice(n_vol, self.m, replace=self.m > n_vol)
            batch = []
            for i, v in enumerate(vols):
                parts = range(self.partitions)
                if i == self.m - 1 and self.last < self.partitions:
                    parts = sorted(self.rng.choice(self.partitions, self.last, replace=False))
                for s in parts:
                    idx = self.members[v][s]
                    batch.append(int(idx[self.rng.integers(0, len(idx))]))
            yield batch


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(
    dataset: SliceDataset, batch_sampler: Any, num_workers: int
) -> tuple[Iterator[dict[str, Any]], Any]:
    """An endless iterator of collated batches and a function that stops its workers."""
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        persistent_workers=False,
        worker_init_fn=_worker_init if num_workers else None,
    )
    iterator = iter(loader)

    def close() -> None:
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    return iterator, close
