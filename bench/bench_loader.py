"""Batch loading from the preprocessed cache against decoding NIfTI per sample, side by side.

Writes a synthetic ACDC archive, prepares its cache with the given settings, then draws the same
random (scan, slice) batches twice:

* cache: ``SliceDataset`` over the memory-mapped ``.npy`` files (what ``build_data`` uses);
* nifti: per sample, decode the ``.nii.gz`` image and label, reorient, normalise with the scan's
  percentiles, resample the chosen slice to the target spacing and crop/pad it (the minimum work
  needed to produce the same item without a cache).

Prints batches per second of each, their ratio, and the cache's footprint: bytes on disk (against
the compressed sources and the decoded float32 volumes) and the process RSS after streaming the
batches (the memory maps are file-backed pages shared between loader workers).

Usage::

    python bench/bench_loader.py [--patients 20] [--size 128] [--batches 40] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from segssl.config import PreprocessConfig
from segssl.data import get_adapter, synthesize
from segssl.data.io import read_volume
from segssl.data.preprocess import _crop_or_pad, normalise, prepare_records, reorient
from segssl.data.samplers import RandomBatchSampler, SliceDataset, make_loader


def rss_mb() -> float:
    """Resident set size of this process (MiB), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def nifti_item(rec, z: int, cfg: PreprocessConfig, lut) -> dict:
    """One batch item decoded from the NIfTI files (no cache)."""
    image, affine = read_volume(rec.image)
    label, _ = read_volume(rec.label)
    image, label, (_, dy, dx) = reorient(image.astype(np.float32), label, affine, cfg)
    image = normalise(image, cfg.percentiles, cfg.clip, str(rec.image))
    z = min(z, image.shape[0] - 1)
    img2d, lab2d = image[z : z + 1], label[z : z + 1]
    ty, tx = cfg.spacing
    img2d = ndimage.zoom(img2d, (1, dy / ty, dx / tx), order=1, mode="nearest", grid_mode=True)
    lab2d = ndimage.zoom(lab2d, (1, dy / ty, dx / tx), order=0, mode="nearest", grid_mode=True)
    center = (img2d.shape[1] / 2.0, img2d.shape[2] / 2.0)
    img2d = _crop_or_pad(img2d, tuple(cfg.size), center)
    lab2d = _crop_or_pad(lab2d, tuple(cfg.size), center)
    return {
        "image": torch.from_numpy(img2d.astype(np.float32)),
        "label": torch.from_numpy(lut[lab2d[0]]),
    }


def main() -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--size", type=int, default=128, help="phantom matrix size (px)")
    ap.add_argument("--out-size", type=int, default=128, help="preprocessed slice size (px)")
    ap.add_argument("--spacing", type=float, default=1.5, help="target in-plane spacing (mm)")
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segssl-bench-"))
    # one archive per phantom setting, so a reused --workdir never mixes two of them
    root = work / f"acdc-{args.patients}p-{args.size}px"
    cache = work / f"cache-{args.patients}p-{args.size}px"
    t0 = time.perf_counter()
    if not root.exists():
        synthesize("acdc", root, scans=args.patients, size=args.size, seed=0)
    t_synth = time.perf_counter() - t0
    cfg = PreprocessConfig(spacing=(args.spacing, args.spacing), size=(args.out_size,) * 2)
    adapter = get_adapter("acdc", root)
    records = adapter.list_scans()
    t0 = time.perf_counter()
    manifest = prepare_records(adapter, records, cache, cfg)
    t_prepare = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_records(adapter, records, cache, cfg)
    t_reuse = time.perf_counter() - t0

    entries = manifest["scans"]
    lut = np.arange(len(adapter.class_names) + 1, dtype=np.int64)
    ds = SliceDataset(
        [cache / e["file"] for e in entries],
        [e["scan_id"] for e in entries],
        [e["slices"] for e in entries],
        3,
        lut,
        with_labels=True,
    )
    sampler = RandomBatchSampler(len(ds), args.batch_size, seed=0, stream=1)
    batches = [next(iter(sampler)) for _ in range(args.batches)]

    rss0 = rss_mb()
    it, close = make_loader(ds, iter(batches), num_workers=0)
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    t_cache = time.perf_counter() - t0
    close()
    rss_cache = rss_mb()
    assert n == args.batches

    by_id = {r.scan_id: r for r in records}
    t0 = time.perf_counter()
    for batch in batches:
        items = [
            nifti_item(by_id[ds.scan_ids[ds.scan_of[i]]], int(ds.slice_of[i]), cfg, lut)
            for i in batch
        ]
        torch.stack([x["image"] for x in items])
        torch.stack([x["label"] for x in items])
    t_nifti = time.perf_counter() - t0

    disk = sum(e["bytes"] for e in entries)
    sources = sum(s["bytes"] for e in entries for s in e["sources"].values())
    decoded = sum(int(np.prod(e["source_shape"])) * 4 for e in entries)
    cached_f32 = sum(e["slices"] * args.out_size**2 * (4 + 8) for e in entries)
    bps_cache, bps_nifti = args.batches / t_cache, args.batches / t_nifti
    print(
        f"dataset: synthetic ACDC, {args.patients} patients = {len(entries)} scans, "
        f"{manifest['num_slices']} slices, phantom {args.size} px -> "
        f"{args.out_size} px at {args.spacing} mm"
    )
    print(
        f"synthesise: {t_synth:.2f} s   prepare cache: {t_prepare:.2f} s   "
        f"reuse check: {t_reuse:.3f} s"
    )
    print(f"batches of {args.batch_size}, {args.batches} batches, 1 thread, no workers")
    print(
        f"  cache (memory-mapped .npy): {bps_cache:9.1f} batches/s "
        f"({1e3 / bps_cache:7.2f} ms/batch)"
    )
    print(
        f"  NIfTI decode per sample:    {bps_nifti:9.1f} batches/s "
        f"({1e3 / bps_nifti:7.2f} ms/batch)"
    )
    print(f"  ratio cache / NIfTI:        {bps_cache / bps_nifti:9.1f} x")
    print("footprint:")
    print(
        f"  cache on disk:              {disk / 2**20:9.2f} MiB "
        f"({manifest['settings']['dtype']} image + uint8 label per slice)"
    )
    print(f"  compressed sources (.nii.gz): {sources / 2**20:7.2f} MiB (ED/ES frames + labels)")
    print(f"  decoded source volumes f32: {decoded / 2**20:9.2f} MiB")
    print(f"  cache as in-memory f32+i64: {cached_f32 / 2**20:9.2f} MiB (what a tensor copy costs)")
    print(
        f"  RSS before / after streaming from the cache: {rss0:.1f} / {rss_cache:.1f} MiB "
        f"(+{rss_cache - rss0:.1f} MiB, file-backed pages)"
    )
    print(f"workdir: {work}")


if __name__ == "__main__":
    main()
