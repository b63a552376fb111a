"""Cluster pictures of clustering methods (as BIM Figs. 1-3): for a few validation slices the
image, the cluster assignment (argmax over K), the cluster-entropy map, and the joint
distribution of the two views' assignments. Matplotlib ``Figure`` objects (Agg canvas, no pyplot
state), saved by the engine under ``workdir/pictures/``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:  # matplotlib is imported when a picture is drawn: a method's import stays light
    from matplotlib.figure import Figure

__all__ = ["cluster_figures"]


def _figure(w: float, h: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def cluster_figures(image: Tensor, probs: Tensor, joint: Tensor | None) -> dict[str, Figure]:
    """Figures of a clustering.

    Args:
        image: ``(B, 1, H, W)`` slices.
        probs: ``(B, K, H, W)`` cluster probabilities of those slices (one head).
        joint: ``(K, K)`` joint distribution of the two views, or None.

    Returns:
        ``{"clusters": image | assignment | entropy per slice, "joint": K x K matrix}``.
    """
    img = image[:, 0].float().cpu().numpy()
    p = probs.float().cpu()
    k = p.shape[1]
    assign = p.argmax(1).numpy()
    ent = (-(p.clamp_min(1e-12).log() * p).sum(1) / math.log(k)).numpy()
    n = img.shape[0]
    fig = _figure(9, 3 * n)
    for i in range(n):
        cells = [
            (img[i], "gray", "image", None),
            (assign[i], "tab20" if k <= 20 else "gist_ncar", f"clusters (K={k})", (0, k - 1)),
            (ent[i], "magma", "cluster entropy / log K", (0, 1)),
        ]
        for j, (data, cmap, title, lim) in enumerate(cells):
            ax = fig.add_subplot(n, 3, 3 * i + j + 1)
            kw = {"vmin": lim[0], "vmax": lim[1]} if lim else {}
            ax.imshow(data, cmap=cmap, interpolation="nearest", **kw)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = {"clusters": fig}
    if joint is not None:
        jfig = _figure(4.5, 4)
        ax = jfig.add_subplot(1, 1, 1)
        im = ax.imshow(np.asarray(joint.float().cpu()), cmap="viridis", interpolation="nearest")
        used = int((p.argmax(1).flatten().bincount(minlength=k) > 0).sum())
        ax.set_title(f"joint P (K={k}, {used} clusters used)", fontsize=9)
        ax.set_xlabel("cluster of g(T(s(x)))")
        ax.set_ylabel("cluster of g(s(T(x)))")
        jfig.colorbar(im, ax=ax, fraction=0.046)
        jfig.tight_layout()
        out["joint"] = jfig
    return out
