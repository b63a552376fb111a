"""Device, mixed precision and memory-format decisions; seeding and RNG state capture.

AMP (``torch.autocast`` in ``train.amp_dtype``, with a ``GradScaler`` for float16) and
``channels_last`` are CUDA-only: ``on`` without CUDA is a configuration error (never a silent CPU
fallback), and so is bfloat16 on a GPU without it. ``channels_last: auto`` is on exactly on CUDA;
``amp: auto`` is off everywhere (fp32 was the fastest measured on CUDA: see
:class:`~segssl.config.TrainConfig`). Seeding covers Python, NumPy, torch and the run's own
generators, and the complete RNG state is captured for checkpoints as tensors and primitive
containers only (so that checkpoints load with ``torch.load(weights_only=True)``).
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
    amp_dtype: torch.dtype = torch.float16  # autocast's dtype when ``amp``
    grad_scaler: str = "stock"  # float16's scaler: "stock" or "sync_free"

    @property
    def cuda(self) -> bool:
        """True when the run executes on a CUDA device."""
        return self.device.type == "cuda"

    @property
    def scaled(self) -> bool:
        """True when losses go through an enabled gradient scaler (float16 AMP)."""
        return self.amp and self.amp_dtype == torch.float16

    @property
    def capturable(self) -> bool:
        """Adam/RAdam keep their step counters on the device: CUDA float16 AMP with the
        sync-free scaler, which needs every tensor it may revert on the flag's device."""
        return self.cuda and self.scaled and self.grad_scaler == "sync_free"


_AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def _switch(key: str, value: str, cuda: bool, auto: bool) -> bool:
    """``train.<key>`` (auto, on, off) as a decision; ``auto`` is the given default."""
    if value == "auto":
        return auto
    if value == "on" and not cuda:
        raise EngineConfigError(f"train.{key}=on needs a CUDA device; use 'auto' or 'off' on CPU")
    return value == "on"


def resolve_runtime(cfg: TrainConfig, cuda_available: bool | None = None) -> Runtime:
    """Decide device, AMP (and its dtype and scaler) and channels_last from ``cfg``
    (``cuda_available`` for tests).

    Raises:
        EngineConfigError: unknown device string, CUDA requested but absent, AMP/channels_last
            forced on without CUDA, bfloat16 AMP on a GPU without bfloat16.
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
    amp = _switch("amp", cfg.amp, on_cuda, auto=False)  # fp32: the fastest measured on CUDA
    dtype = _AMP_DTYPES[cfg.amp_dtype]
    if amp and dtype == torch.bfloat16:
        _check_bf16(device)
    return Runtime(
        device=device,
        amp=amp,
        channels_last=_switch("channels_last", cfg.channels_last, on_cuda, auto=on_cuda),
        amp_dtype=dtype,
        grad_scaler=cfg.grad_scaler,
    )


def _check_bf16(device: torch.device) -> None:
    """Refuse bfloat16 AMP on a CUDA device without native bfloat16 (before Ampere, where
    ``torch.cuda.is_bf16_supported()`` counts slow emulation as support)."""
    if torch.version.hip:  # every ROCm architecture torch supports has it
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise EngineConfigError(
            f"train.amp_dtype=bfloat16 but {device} (compute capability {major}.{minor}) has no "
            "native bfloat16 (8.0, Ampere, or newer); use amp_dtype: float16 or amp: off"
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
