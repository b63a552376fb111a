"""segssl checkpoints: a marked dict of tensors and primitive containers.

Every checkpoint is a dict with ``format == "segssl-checkpoint"`` and a ``version``; it holds only
tensors, numbers, strings, lists and dicts, and is always read with
``torch.load(weights_only=True)`` (no arbitrary code runs when a file is opened).

Version 2 (method contract v2): ``model`` holds the weights a later stage receives (the method's
``carry``, named like the model's tensors); ``last.pt`` adds ``method`` (the whole
``method.state_dict()``: model, heads, teachers, queues, counters), ``optimizers`` /
``schedulers`` (one state per optimiser, by name), ``scaler``, ``rng``, ``epoch``, ``best``,
``history``; ``best.pt`` adds ``predict`` (the weights of the network ``predict`` uses).
Version 1 files (before v2: ``model`` and ``heads`` only) cannot be resumed (the method state and
per-optimiser states are missing): resuming one is an error. Their ``model`` is the student's
weights, which is what a v2 ``model`` holds for every method that carries the student, so a v1
file still serves as ``train.init_from`` unchanged (the documented conversion). Loading model
weights compares the model's tensors with the checkpoint's and refuses to go on when they differ,
listing the missing, unexpected and shape-mismatched names; partial loading (e.g. encoder only) is
explicit through ``only`` / ``exclude`` prefixes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointWriteError",
    "compare_state",
    "load_checkpoint",
    "load_model_weights",
    "save_checkpoint",
]

FORMAT = "segssl-checkpoint"
VERSION = 2
V1 = 1  # before method contract v2: model + heads only
_LIST_MAX = 12


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not a segssl checkpoint, or incompatible."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, quota, permissions); ``errno`` is set."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` and flush it to the disk (errors are OSError)."""
    with open(path, "xb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` with the format marker, atomically (temp file then rename).

    The temporary file is unique per attempt (``<name>.tmp-<pid>-<random>``), so two writers
    never share one, and it is removed when the write fails. The checkpoint is serialised in
    memory first and written with plain file I/O, so a full disk surfaces as ``ENOSPC`` (torch's
    own writer reports it as an opaque ``inline_container`` error).

    Raises:
        CheckpointWriteError: the file could not be written; names the path and the errno.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buf)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(tmp, buf.getbuffer())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        what = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointWriteError(
            f"{path}: cannot write the checkpoint: [Errno {exc.errno}] "
            f"{errno.errorcode.get(exc.errno or 0, '?')} ({what}); the previous checkpoint, if "
            "any, is unchanged",
            exc.errno,
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def load_checkpoint(path: str | Path, resume: bool = False) -> dict[str, Any]:
    """Read a segssl checkpoint on the CPU with ``weights_only=True``.

    Args:
        path: the file.
        resume: the checkpoint will be resumed from: only the current version will do (a
            version-1 file still serves for its ``model`` weights otherwise).

    Raises:
        CheckpointError: missing file, a file torch cannot read safely, no segssl marker, an
            unknown version, or (``resume``) a version-1 file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a segssl checkpoint (cannot be read with torch.load(weights_only=True): "
            f"{first})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        kind = type(obj).__name__
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else []
        raise CheckpointError(
            f"{path}: not a segssl checkpoint (expected a dict with format={FORMAT!r}; "
            f"got a {kind}{' with keys ' + str(keys) if keys else ''})"
        )
    version = obj.get("version")
    if version == V1 and resume:
        raise CheckpointError(
            f"{path}: segssl-checkpoint version 1 (model and heads only, written before method "
            f"contract v2) cannot be resumed: it lacks the method state (teachers, counters) and "
            f"the optimiser states of version {VERSION}. Start the run over (resume=False or a new "
            "workdir); the file still works as train.init_from (its model weights)"
        )
    if version not in (V1, VERSION):
        raise CheckpointError(
            f"{path}: segssl checkpoint version {version!r}, expected {VERSION} (or {V1})"
        )
    return obj


def _selected(name: str, only: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    def hit(prefixes: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in prefixes)

    return (not only or hit(only)) and not hit(exclude)


def compare_state(
    model_state: Mapping[str, torch.Tensor],
    ckpt_state: Mapping[str, torch.Tensor],
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mismatched)`` tensor names among the selected prefixes.

    ``mismatched`` entries read ``name: model (shape) vs checkpoint (shape)``.
    """
    only, exclude = tuple(only), tuple(exclude)
    want = {k for k in model_state if _selected(k, only, exclude)}
    have = {k for k in ckpt_state if _selected(k, only, exclude)}
    mismatched = [
        f"{k}: model {tuple(model_state[k].shape)} vs checkpoint {tuple(ckpt_state[k].shape)}"
        for k in sorted(want & have)
        if tuple(model_state[k].shape) != tuple(ckpt_state[k].shape)
    ]
    return sorted(want - have), sorted(have - want), mismatched


def _fmt(title: str, names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_MAX])
    more = f", ... and {len(names) - _LIST_MAX} more" if len(names) > _LIST_MAX else ""
    return f"  {title} ({len(names)}): {shown}{more}"


def load_model_weights(
    model: nn.Module,
    path: str | Path,
    *,
    strict: bool = True,
    only: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> dict[str, list[str]]:
    """Load the ``model`` tensors of the checkpoint at ``path`` into ``model``.

    Args:
        model: the network to initialise.
        path: a segssl checkpoint (``last.pt`` or ``best.pt`` of an earlier run).
        strict: every selected tensor must exist with the same shape on both sides; otherwise
            only the tensors present with equal shapes are loaded and the rest is reported.
        only: parameter-name prefixes to load (empty: everything), e.g. the encoder blocks.
        exclude: prefixes never loaded, e.g. ``Conv_1x1`` when the class count differs.

    Returns:
        ``{"loaded": [...], "missing": [...], "unexpected": [...], "mismatched": [...]}``.

    Raises:
        CheckpointError: not a segssl checkpoint, no model tensors, or (strict) any difference,
            listing the differing tensor names.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.get("model")
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: segssl checkpoint without model weights")
    only, exclude = tuple(only), tuple(exclude)
    own = model.state_dict()
    missing, unexpected, mismatched = compare_state(own, state, only, exclude)
    if strict and (missing or unexpected or mismatched):
        lines = [f"{path}: checkpoint does not match the model architecture"]
        if missing:
            lines.append(_fmt("missing in checkpoint", missing))
        if unexpected:
            lines.append(_fmt("unexpected in checkpoint", unexpected))
        if mismatched:
            lines.append(_fmt("shape differs", mismatched))
        lines.append(
            "  (partial loading must be explicit: train.init_only / train.init_exclude, "
            "or train.init_strict=false)"
        )
        raise CheckpointError("\n".join(lines))
    bad = {m.split(":")[0] for m in mismatched}
    take = {
        k: v for k, v in state.items() if k in own and k not in bad and _selected(k, only, exclude)
    }
    if not take:
        raise CheckpointError(f"{path}: no tensor of the checkpoint fits the selected model part")
    model.load_state_dict(take, strict=False)
    return {
        "loaded": sorted(take),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
    }
