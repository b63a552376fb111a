"""Slice-wise prediction of whole volumes and their 3D evaluation (the papers' protocol).

Every slice of a scan is segmented in 2D, the argmax labels are stacked back into a volume, and
3D Dice / HD95 / ASD are computed per scan by :mod:`segssl.metrics`, averaged over scans and then
over foreground classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segssl.config import MetricsConfig
from segssl.data.types import Volume
from segssl.engine.runtime import Runtime

__all__ = ["pad_to_multiple", "predict_volume", "evaluate"]


def pad_to_multiple(images: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad ``(B, C, H, W)`` on the bottom/right so H and W divide by ``multiple``."""
    h, w = images.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        images = F.pad(images, (0, pw, 0, ph))
    return images, (h, w)


@torch.no_grad()
def predict_volume(
    predict: Callable[[Tensor], Tensor],
    volume: Volume,
    runtime: Runtime,
    batch_size: int,
    multiple: int,
) -> np.ndarray:
    """Argmax labels ``(D, H, W)`` int64 of ``volume`` predicted slice by slice."""
    out = []
    image = torch.from_numpy(np.ascontiguousarray(volume.image, dtype=np.float32))
    for start in range(0, image.shape[0], batch_size):
        x = image[start : start + batch_size, None].to(runtime.device)
        x, (h, w) = pad_to_multiple(x, multiple)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp):
            logits = predict(x)
        out.append(logits[..., :h, :w].argmax(1).cpu())
    return torch.cat(out).numpy().astype(np.int64)


def evaluate(
    predict: Callable[[Tensor], Tensor],
    volumes: Sequence[Volume],
    class_names: Sequence[str],
    runtime: Runtime,
    batch_size: int,
    multiple: int,
    distances: bool,
    prefix: str,
    defs: MetricsConfig | None = None,
) -> dict[str, float]:
    """3D metrics of ``volumes`` by :func:`segssl.metrics.evaluate_volumes`, keys prefixed:
    ``{prefix}/dsc`` (mean over foreground classes), ``{prefix}/dsc/<class>`` (mean over scans);
    with ``distances`` also ``{prefix}/hd95[/<class>]``, ``{prefix}/asd[/<class>]`` in mm with
    each scan's spacing, ``{prefix}/nsd[/<class>]``, the empty-mask counts;
    ``{prefix}/n_scans``; with ``defs.per_scan`` (and ``distances``) each scan's Dice,
    ``{prefix}/scan/dsc/<i>``. ``defs``: the metric definitions (the run's ``metrics`` config).
    """
    from segssl.metrics import MetricDefs, evaluate_volumes

    defs = defs or MetricsConfig()

    preds = [predict_volume(predict, v, runtime, batch_size, multiple) for v in volumes]
    out = evaluate_volumes(
        preds,
        [v.label for v in volumes],
        [v.spacing for v in volumes],
        list(class_names),
        distances=distances,
        defs=MetricDefs(
            hd95=defs.hd95,
            nsd_tolerance=defs.nsd_tolerance,
            both_empty=defs.both_empty,
            one_empty=defs.one_empty,
        ),
        per_scan=distances and defs.per_scan,
    )
    if not distances:
        out.pop("n_scans", None)
    return {f"{prefix}/{k}": float(v) for k, v in out.items()}
