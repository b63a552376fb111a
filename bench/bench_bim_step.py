"""Benchmark: one ``bim`` pre-training step against the bare U-Net passes it needs.

Measured side by side in one process (median of ``--repeats`` timings after warm-up):

* ``bare``: the two U-Net forward/backward passes a bim step needs (``s(x)`` and ``s(T(x))``
  up to Up_conv2, backward of a trivial loss) plus the optimiser step;
* ``bim``: the engine's full step: ``training_step`` (paired transform, heads, L_con, L_MI,
  L_CC), backward and optimiser step; target ratio bim / bare <= 1.3;
* the share of ``mi_loss`` and ``cc_loss`` (forward + backward on tensors of the step's shapes,
  all heads) in the bim step;
* loader throughput: unlabeled batches per second from ``build_data`` plus the engine's base
  augmentation, against the steps per second the bim step consumes; target >= 3x.

Usage: ``python bench/bench_bim_step.py [--size 128] [--width 16] [--batch 8] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _median_time(fn: Callable[[], None], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="slice side (px)")
    ap.add_argument("--width", type=int, default=16, help="U-Net base width (16 = paper)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from segssl.augment import BaseAugment
    from segssl.config import parse_run_config
    from segssl.data import build_data, synthesize
    from segssl.engine import build_optimizer
    from segssl.losses import mi_loss
    from segssl.losses.boundary import cc_loss
    from segssl.methods import get_method
    from segssl.methods.base import MethodContext
    from segssl.models import build_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-bim-"))
    root = synthesize("acdc", tmp / "acdc", scans=6, size=args.size, seed=0)
    cfg = parse_run_config(
        {
            "stage": "pretrain",
            "data": {
                "root": str(root),
                "preprocess": {"size": [args.size, args.size], "spacing": None, "fit": "resize"},
                "unlabeled_batch_size": args.batch,
                "num_workers": args.workers,
            },
            "augment": {"crop": args.size},
            "model": {"base_width": args.width, "freeze": ["Conv_1x1"]},
            "method": {"name": "bim", "k": args.k},
        }
    )
    data = build_data(cfg.data, seed=0, labeled=False, unlabeled=True)
    aug, gen = BaseAugment(cfg.augment), torch.Generator().manual_seed(0)

    def draw() -> dict:
        b = next(data.unlabeled)
        b["image"], _ = aug(b["image"], None, generator=gen)
        return b

    batch = draw()
    model = build_model(cfg.model, data.num_classes)
    ctx = MethodContext(
        data.num_classes,
        tuple(data.class_names),
        torch.device("cpu"),
        cfg.augment,
        cfg.data.partitions,
        torch.Generator().manual_seed(1),
    )
    method = get_method("bim")(model, cfg.method, ctx)
    opt = build_optimizer(cfg.optim, method.parameters())
    x = batch["image"]
    tx = method.T.sample(x.shape[0], generator=torch.Generator().manual_seed(2)).image(x)

    def bare() -> None:
        opt.zero_grad(set_to_none=True)
        f1 = model(x, taps=["Up_conv2", "Conv5"])[1]
        f2 = model(tx, taps=["Up_conv2", "Conv5"])[1]
        (sum(v.mean() for v in f1.values()) + sum(v.mean() for v in f2.values())).backward()
        opt.step()

    def bim_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = method.training_step(None, batch)
        out["loss"].backward()
        opt.step()

    heads = cfg.method.heads
    shape = (x.shape[0], args.k, args.size, args.size)
    probs = [torch.randn(shape).softmax(1).requires_grad_() for _ in range(2 * heads)]

    def mi_only() -> None:
        loss = sum(mi_loss(probs[2 * h], probs[2 * h + 1], 0.5, 1.0) for h in range(heads))
        loss.backward()

    def cc_only() -> None:
        loss = sum(cc_loss(tx, probs[h], 5, "sobel", 0.75) for h in range(heads))
        loss.backward()

    feats = model(x, taps=["Up_conv2"])[1]["Up_conv2"].detach()
    state = method.T.sample(x.shape[0], generator=torch.Generator().manual_seed(3))

    def heads_only() -> None:  # g on both views: 2 x n_heads (1x1 conv + softmax over K)
        f = feats.clone().requires_grad_()
        probs = method.heads["cluster"](f) + method.heads["cluster"](f * 1.0)
        sum(q[:, 0].mean() for q in probs).backward()

    def warp_only() -> None:  # T on the Up_conv2 features (geometry only)
        f = feats.clone().requires_grad_()
        state.geometry(f).mean().backward()

    r = args.repeats
    t_bare = _median_time(bare, r, args.warmup)
    t_bim = _median_time(bim_step, r, args.warmup)
    t_mi = _median_time(mi_only, r, args.warmup)
    t_cc = _median_time(cc_only, r, args.warmup)
    t_heads = _median_time(heads_only, r, args.warmup)
    t_warp = _median_time(warp_only, r, args.warmup)
    t_load = _median_time(draw, 5 * r, args.warmup)
    data.close()

    print(
        f"settings: {args.size}x{args.size} px, batch {args.batch}, U-Net width {args.width}, "
        f"K={args.k}, {heads} heads, torch threads {args.threads}, workers {args.workers}"
    )
    print(f"bare two U-Net fwd/bwd + optimiser step : {t_bare * 1e3:8.1f} ms")
    print(f"bim pre-training step                   : {t_bim * 1e3:8.1f} ms")
    print(f"ratio bim / bare                        : {t_bim / t_bare:8.2f}  (target <= 1.3)")
    print(
        f"mi_loss fwd+bwd ({heads} heads)               : {t_mi * 1e3:8.1f} ms  "
        f"= {100 * t_mi / t_bim:5.1f} % of the bim step"
    )
    print(
        f"cc_loss fwd+bwd ({heads} heads)               : {t_cc * 1e3:8.1f} ms  "
        f"= {100 * t_cc / t_bim:5.1f} % of the bim step"
    )
    print(
        f"cluster heads fwd+bwd (2 views)         : {t_heads * 1e3:8.1f} ms  "
        f"= {100 * t_heads / t_bim:5.1f} % of the bim step"
    )
    print(
        f"feature warp T(s(x)) fwd+bwd            : {t_warp * 1e3:8.1f} ms  "
        f"= {100 * t_warp / t_bim:5.1f} % of the bim step"
    )
    print(
        f"loader + base augmentation              : {1 / t_load:8.1f} batches/s vs "
        f"{1 / t_bim:.1f} steps/s consumed = {t_bim / t_load:.1f}x  (target >= 3x)"
    )


if __name__ == "__main__":
    main()
