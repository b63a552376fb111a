"""Device, mixed precision and memory-format decisions; seeding and RNG state capture.

AMP (``torch.autocast`` + ``GradScaler``) and ``channels_last`` are CUDA-only: ``auto`` turns them
on exactly when the run's device is CUDA; ``on`` without CUDA is a configuration error (never a
silent CPU fallback). Seeding covers Python, NumPy, torch and the run's own generators, and the
complete RNG state is captured for checkpoints as tensors and primitive containers only (so that
checkpoints load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
from dataclasses import dataclass

import numpy as np
import torch

from segssl.config import TrainConfig

__all__ = [
    "EngineConfigError",
    "Runtime",
    "capture_rng",
    "keep_freed_memory",
    "resolve_runtime",
    "restore_rng",
    "seed_everything",
]


class EngineConfigError(ValueError):
    """A run setting cannot be honoured on this machine or with this method; names the key."""


@dataclass(frozen=True)
class Runtime:
    """Resolved execution settings of a run."""

    device: torch.device
    amp: bool
    channels_last: bool

    @property
    def cuda(self) -> bool:
        """True when the run executes on a CUDA device."""
        return self.device.type == "cuda"


def _switch(key: str, value: str, cuda: bool) -> bool:
    if value == "auto":
        return cuda
    if value == "on" and not cuda:
        raise EngineConfigError(f"train.{key}=on needs a CUDA device; use 'auto' or 'off' on CPU")
    return value == "on"


def resolve_runtime(cfg: TrainConfig, cuda_available: bool | None = None) -> Runtime:
    """Decide device, AMP and channels_last from ``cfg`` (``cuda_available`` for tests).

    Raises:
        EngineConfigError: unknown device string, CUDA requested but absent, AMP/channels_last
            forced on without CUDA.
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cfg.device == "auto":
        device = torch.device("cuda" if cuda else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except (RuntimeError, ValueError) as exc:
            raise EngineConfigError(
                f"train.device={cfg.device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N' ({exc})"
            ) from None
        if device.type not in ("cpu", "cuda"):
            raise EngineConfigError(f"train.device={cfg.device!r}: expected cpu or cuda")
        if device.type == "cuda" and not cuda:
            raise EngineConfigError(f"train.device={cfg.device!r} but CUDA is not available")
    on_cuda = device.type == "cuda"
    if not on_cuda and cfg.cpu_allocator == "keep":
        keep_freed_memory()
    return Runtime(
        device=device,
        amp=_switch("amp", cfg.amp, on_cuda),
        channels_last=_switch("channels_last", cfg.channels_last, on_cuda),
    )


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: no ``mmap`` for large blocks, no heap trimming.

    On CPU, glibc serves each allocation above 32 MB with a fresh ``mmap`` and unmaps it on free,
    so every large activation is paid again in page faults at its first write, step after step
    (``bench/bench_bim_step.py`` measures it). This is what a caching allocator avoids on CUDA.
    The setting is process-wide and affects later allocations only.

    Returns:
        True when applied; False where the C library is not glibc (nothing changes).
    """
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def seed_everything(seed: int, runtime: Runtime, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (all devices); make cuDNN deterministic when asked."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if runtime.cuda:
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG state of the process and of ``generators`` as tensors and primitives."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached"],
        )
    )
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
