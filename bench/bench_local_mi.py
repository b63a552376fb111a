"""Benchmark: the GMI local MI loss, all displacements at once, against a per-displacement loop
and against one U-Net training step.

Measured side by side in one process (after warm-up every repeat runs each function once, in a
rotating order; figures are medians; ratios are medians of per-repeat ratios):

* ``conv``: :func:`segssl.losses.mi.local_mi_loss` forward + backward (one grouped convolution
  of the two probability maps gives the joints of all displacements);
* ``loop``: the same loss written one displacement at a time (shift, K x K joint, symmetrise,
  normalise, MI), forward + backward; target conv >= 10x faster;
* ``unet``: one U-Net step (forward, cross-entropy, backward, Adam) at the paper's crop, for
  scale: the share the local MI adds to a training step.

Defaults are the issue's case: K=10, 7x7 displacements (padding 3), batch 10, 112x112 maps
(Up_conv3's resolution at the paper's 224 crop), one head; ``--heads 5`` is the paper's
projector count.

Usage: ``python bench/bench_local_mi.py [--k 10] [--pad 3] [--batch 10] [--size 112]
[--heads 1] [--threads 2] [--repeats 5] [--unet-size 224] [--width 16]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from segssl.config import ModelConfig
from segssl.losses.mi import batched_mutual_information, local_mi_loss
from segssl.models.unet import build_model


def loop_local_mi(p1: torch.Tensor, p2: torch.Tensor, pad: int) -> torch.Tensor:
    """Reference: one joint per displacement in a Python loop (same value as local_mi_loss)."""
    _, _, k, h, w = p1.shape
    q = F.pad(p2, (pad, pad, pad, pad))
    losses = []
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            # p1 at (y + dy, x + dx) against p2 at (y, x): shift p2 the other way
            shifted = q[..., pad - dy : pad - dy + h, pad - dx : pad - dx + w]
            joint = torch.einsum("bnjyx,bnkyx->njk", p1, shifted)
            joint = (joint + joint.transpose(-2, -1)) / 2
            joint = joint / joint.sum(dim=(-2, -1), keepdim=True)
            losses.append(-batched_mutual_information(joint))
    return torch.stack(losses).mean()


def _interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--pad", type=int, default=3)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--unet-size", type=int, default=224)
    ap.add_argument("--width", type=int, default=16)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    shape = (a.batch, a.heads, a.k, a.size, a.size)
    z1 = torch.randn(shape, generator=g).mul(3).requires_grad_(True)
    z2 = torch.randn(shape, generator=g).mul(3).requires_grad_(True)

    def run(fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            loss = fn(z1.softmax(2), z2.softmax(2), a.pad)
            loss.backward()
            z1.grad = z2.grad = None

        return step

    with torch.no_grad():
        v_conv = float(local_mi_loss(z1.softmax(2), z2.softmax(2), a.pad))
        v_loop = float(loop_local_mi(z1.softmax(2), z2.softmax(2), a.pad))
    model = build_model(ModelConfig(base_width=a.width), num_classes=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(a.batch, 1, a.unet_size, a.unet_size, generator=g)
    y = torch.randint(0, 4, (a.batch, a.unet_size, a.unet_size), generator=g)

    def unet_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    times = _interleaved(
        {"conv": run(local_mi_loss), "loop": run(loop_local_mi), "unet": unet_step}, a.repeats
    )
    med = {n: statistics.median(t) for n, t in times.items()}
    speedup = statistics.median(lp / c for lp, c in zip(times["loop"], times["conv"], strict=True))
    share = statistics.median(c / u for c, u in zip(times["conv"], times["unet"], strict=True))
    print(
        f"local MI: K={a.k}, {2 * a.pad + 1}x{2 * a.pad + 1} displacements, batch {a.batch}, "
        f"{a.size}x{a.size}, heads {a.heads}; {a.threads} threads, {a.repeats} repeats"
    )
    print(f"  values: conv {v_conv:.6f}, loop {v_loop:.6f} (|diff| {abs(v_conv - v_loop):.2e})")
    print(f"  conv (fwd+bwd)          {med['conv'] * 1e3:9.1f} ms")
    print(f"  per-displacement loop   {med['loop'] * 1e3:9.1f} ms   loop / conv = {speedup:.1f}x")
    print(
        f"  U-Net step (w{a.width}, {a.unet_size}px, Adam) {med['unet'] * 1e3:9.1f} ms"
        f"   conv / U-Net step = {share:.2f}"
    )


if __name__ == "__main__":
    main()
