"""GPU packing guard: a trial that Ray gave a fraction of a GPU keeps to that fraction.

Ray's GPU fractions are logical: ``resources: {gpu: 0.25}`` lets Ray place four trials on one
card, but nothing stops one of them from allocating the whole card and starving (or crashing)
its three neighbours. :func:`apply_memory_guard` therefore caps the trial process's CUDA caching
allocator at its share (``torch.cuda.set_per_process_memory_fraction``); an allocation past the
cap raises ``torch.OutOfMemoryError`` in that trial only, which :func:`oom_report` turns into a
:class:`GpuMemoryError` naming the trial, the bytes it asked for and its share.

:func:`placement_tags` says where the trial runs (node, GPU index, share) for its MLflow run.
Everything Ray- and torch-specific is passed in or imported lazily, so the logic is unit-tested
on a machine without a GPU (and without Ray) by handing in fakes.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from segssl.record import (
    TAG_GPU_CAP,
    TAG_GPU_IDS,
    TAG_GPU_SHARE,
    TAG_HOSTNAME,
    TAG_NODE_ID,
    TAG_NODE_IP,
)

__all__ = [
    "GpuGuard",
    "GpuMemoryError",
    "apply_memory_guard",
    "is_oom",
    "oom_report",
    "placement_tags",
]


_ALLOC_RE = re.compile(r"Tried to allocate ([0-9.]+) ?([KMGT]i?B|bytes|B)", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNITS.update({"kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40})  # torch prints binary units


class GpuMemoryError(RuntimeError):
    """A trial ran out of its share of GPU memory (not retryable: the same trial asks again)."""


@dataclass(frozen=True)
class GpuGuard:
    """What the guard did for one trial.

    Attributes:
        share: the trial's GPU resource from Ray (0 on a CPU trial).
        fraction: the per-process memory fraction set (None when no cap was set: CPU trial, a
            whole GPU or more, or no CUDA device visible).
        devices: the in-process CUDA device indices the cap was set on.
        cap_bytes: the cap in bytes on the first device (None without a cap).
        total_bytes: that device's total memory (None without CUDA).
    """

    share: float
    fraction: float | None
    devices: tuple[int, ...] = ()
    cap_bytes: int | None = None
    total_bytes: int | None = None


def _assigned_gpu_share(ray_context: Any) -> float:
    res = ray_context.get_assigned_resources() or {}
    return float(res.get("GPU", 0.0))


def apply_memory_guard(share: float, torch_mod: Any = None) -> GpuGuard:
    """Cap this process's CUDA memory at ``share`` of each visible GPU when ``0 < share < 1``.

    Args:
        share: the trial's Ray GPU resource (``resources.gpu`` of its stage).
        torch_mod: the ``torch`` module (tests pass a fake); imported when None.

    Returns:
        A :class:`GpuGuard` saying what was set.
    """
    if share <= 0 or share >= 1:
        return GpuGuard(share=share, fraction=None)
    if torch_mod is None:
        import torch as torch_mod  # noqa: PLC0415
    cuda = torch_mod.cuda
    if not cuda.is_available():
        return GpuGuard(share=share, fraction=None)
    devices = tuple(range(cuda.device_count()))  # Ray's CUDA_VISIBLE_DEVICES: the trial's GPU
    for dev in devices:
        cuda.set_per_process_memory_fraction(share, dev)
    total = int(cuda.get_device_properties(devices[0]).total_memory) if devices else None
    cap = int(total * share) if total is not None else None
    return GpuGuard(share=share, fraction=share, devices=devices, cap_bytes=cap, total_bytes=total)


def guard_from_ray(ray_context: Any = None, torch_mod: Any = None) -> GpuGuard:
    """:func:`apply_memory_guard` with the GPU share Ray assigned to the calling trial."""
    if ray_context is None:
        import ray  # noqa: PLC0415

        ray_context = ray.get_runtime_context()
    return apply_memory_guard(_assigned_gpu_share(ray_context), torch_mod)


def placement_tags(guard: GpuGuard, ray_context: Any = None) -> dict[str, str]:
    """MLflow tags saying where the trial runs: node id and IP, host name, GPU ids, share, cap."""
    if ray_context is None:
        import ray  # noqa: PLC0415

        ray_context = ray.get_runtime_context()
    gpu_ids = ray_context.get_accelerator_ids().get("GPU", []) or []
    tags = {
        TAG_NODE_ID: str(ray_context.get_node_id()),
        TAG_HOSTNAME: socket.gethostname(),
        TAG_GPU_IDS: ",".join(str(g) for g in gpu_ids) or "none",
        TAG_GPU_SHARE: f"{guard.share:g}",
    }
    ip = _node_ip()
    if ip:
        tags[TAG_NODE_IP] = ip
    if guard.cap_bytes is not None:
        tags[TAG_GPU_CAP] = str(guard.cap_bytes)
    return tags


def _node_ip() -> str | None:
    try:
        import ray.util  # noqa: PLC0415

        return str(ray.util.get_node_ip_address())
    except Exception:  # noqa: BLE001 - a tag, never a reason to fail a trial
        return None


def is_oom(exc: BaseException) -> bool:
    """True for torch's CUDA out-of-memory error (``torch.OutOfMemoryError``), by type name and
    module so that torch need not be imported here (Ray's own ``OutOfMemoryError``, raised when
    its memory monitor kills a worker for host RAM, is not a GPU OOM)."""
    return any(
        c.__name__ == "OutOfMemoryError" and c.__module__.split(".")[0] == "torch"
        for c in type(exc).__mro__
    )


def requested_bytes(message: str) -> int | None:
    """The size in torch's "Tried to allocate 2.00 GiB" message, in bytes (None if absent)."""
    m = _ALLOC_RE.search(message)
    if m is None:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def oom_report(exc: BaseException, trial: str, guard: GpuGuard) -> GpuMemoryError:
    """Turn a CUDA out-of-memory error of ``trial`` into a :class:`GpuMemoryError` whose message
    names the trial, the bytes it asked for and its share of the GPU."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    asked = requested_bytes(str(exc))
    asked_txt = _fmt_bytes(asked) if asked is not None else "an unknown amount"
    if guard.fraction is not None and guard.cap_bytes is not None:
        share_txt = (
            f"its cap of {guard.fraction:g} of the GPU ({_fmt_bytes(guard.cap_bytes)} of "
            f"{_fmt_bytes(guard.total_bytes or 0)}, resources.gpu={guard.share:g})"
        )
        hint = "raise the stage's resources.gpu or lower its batch size / image size"
    else:
        share_txt = f"the whole GPU (resources.gpu={guard.share:g}, no per-trial cap)"
        hint = "lower the stage's batch size / image size, or use a larger GPU"
    return GpuMemoryError(
        f"trial {trial} ran out of GPU memory: it tried to allocate {asked_txt} beyond "
        f"{share_txt}; {hint}. (torch: {first})"
    )
