"""Benchmark: one ``bim`` pre-training step against the bare U-Net passes it needs.

Measured side by side in one process: after warm-up, every repeat runs each measured function
once in turn (bare, bim, the loss pieces; the order rotates between repeats), so slow phases of a
shared machine hit all of them alike; figures are medians over the repeats, and the ratio is the
median of the per-repeat ratios bim / bare.

* ``bare``: the two U-Net forward/backward passes a bim step needs (``s(x)`` and ``s(T(x))``
  up to Up_conv2, backward of a trivial loss) plus the optimiser step;
* ``bim``: the engine's full step: ``training_step`` (paired transform, heads, L_con, L_MI,
  L_CC), backward and optimiser step; target ratio bim / bare <= 1.3;
* the share of ``mi_loss`` and ``cc_loss`` (forward + backward on tensors of the step's shapes,
  all heads in one batched call, as the step makes it) in the bim step;
* loader throughput: unlabeled batches per second from ``build_data`` plus the engine's base
  augmentation, against the steps per second the bim step consumes; target >= 3x.

Besides wall time the script prints process CPU time (less sensitive to other jobs on a shared
machine) and the minor page faults of one step: on CPU, glibc serves every allocation above
32 MB with a fresh ``mmap`` and unmaps it on free, so each large tensor (the ``(B, heads*K, H,
W)`` cluster maps are 63 MB at 128 px, 190 MB at 224 px) is paid again in page faults at its
first write, step after step. ``--malloc keep`` (the default, as the engine's
``train.cpu_allocator: keep``) calls ``mallopt`` (no mmap, no trimming) before any tensor
exists, so freed memory is reused as a caching allocator would; ``--malloc default`` shows how
much of the overhead the allocator adds without it.

Usage: ``python bench/bench_bim_step.py [--size 128] [--width 16] [--batch 8] [--threads 1]
[--malloc keep|default] [--profile N]``; ``--size 224 128 64`` measures several slice sizes in
one run; ``--profile 25`` prints the 25 top operators of the bim step and of the bare passes
(torch.profiler, self CPU time) instead of timing.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def _interleaved_times(
    fns: dict[str, Callable[[], None]], repeats: int, warmup: int, clock=time.perf_counter
) -> dict[str, list[float]]:
    """Per-function times; each repeat runs every function once, in a rotating order."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t = clock()
            fns[n]()
            times[n].append(clock() - t)
    return times


def _page_faults(fn: Callable[[], None]) -> int:
    """Minor page faults of one call (first writes to freshly mapped memory)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _keep_freed_memory() -> None:
    """The engine's ``train.cpu_allocator: keep`` (glibc: no mmap for large blocks, no trim)."""
    from segssl.engine.runtime import keep_freed_memory

    if not keep_freed_memory():
        raise SystemExit("mallopt failed: --malloc keep needs glibc")


def _setup(args: argparse.Namespace, size: int, tmp: Path) -> tuple[dict, Callable, Callable]:
    """The measured functions at one slice size, the batch drawer and the data closer."""
    from segssl.augment import BaseAugment
    from segssl.config import parse_run_config
    from segssl.data import build_data, synthesize
    from segssl.engine import build_optimizer
    from segssl.losses import mi_loss
    from segssl.losses.boundary import cc_loss
    from segssl.methods import get_method
    from segssl.methods.base import Clock, MethodContext
    from segssl.models import build_model

    torch.manual_seed(0)
    root = synthesize("acdc", tmp / f"acdc{size}", scans=6, size=size, seed=0)
    cfg = parse_run_config(
        {
            "stage": "pretrain",
            "data": {
                "root": str(root),
                "preprocess": {"size": [size, size], "spacing": None, "fit": "resize"},
                "unlabeled_batch_size": args.batch,
                "num_workers": args.workers,
            },
            "augment": {"crop": size},
            "model": {"base_width": args.width, "freeze": ["Conv_1x1"]},
            "method": {"name": "bim", "k": args.k, "heads": args.heads},
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
        cfg.train.epochs,
        cfg.train.iters_per_epoch,
    )
    method = get_method("bim")(model, cfg.method, ctx)
    opt = build_optimizer(cfg.optim, method.parameters())
    x = batch["image"]
    state = method.T.sample(x.shape[0], generator=torch.Generator().manual_seed(2))
    tx = state.image(x)
    taps = [cfg.method.dense_tap, cfg.method.global_tap]

    def bare() -> None:  # the two passes a bim step needs (both taps), backward, optimiser step
        opt.zero_grad(set_to_none=True)
        f1 = model(x, taps=taps)[1]
        f2 = model(tx, taps=taps)[1]
        (sum(v.mean() for v in f1.values()) + sum(v.mean() for v in f2.values())).backward()
        opt.step()

    clock = Clock(1, 0, cfg.train.iters_per_epoch, cfg.train.epochs * cfg.train.iters_per_epoch)

    def bim_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = method.training_step(None, batch, clock)
        out["loss"].backward()
        opt.step()

    heads = cfg.method.heads
    shape = (x.shape[0], heads, args.k, size, size)
    mask = state.valid_mask(size, size).unsqueeze(1)
    p_hat = torch.randn(shape).softmax(2).requires_grad_()
    p_tilde = (torch.randn(shape).softmax(2) * mask).requires_grad_()

    def mi_only() -> None:  # L_MI of all heads (one batched call, as in the step), fwd + bwd
        mi_loss(p_hat, p_tilde, 0.5, 1.0).sum().backward()

    def cc_only() -> None:  # L_CC of all heads (edge map once), fwd + bwd
        cc_loss(tx, p_hat, 5, "sobel", 0.75).sum().backward()

    feats = model(x, taps=[cfg.method.dense_tap])[1][cfg.method.dense_tap].detach()
    cluster = method.heads["cluster"]

    def heads_only() -> None:  # g on both views: one stacked 1x1 conv + softmax each
        f = feats.clone().requires_grad_()
        probs = (cluster.probs(f), cluster.probs(f * 1.0))
        sum(q[:, :, 0].mean() for q in probs).backward()

    def warp_only() -> None:  # T on the Up_conv2 features (geometry only)
        f = feats.clone().requires_grad_()
        state.geometry(f).mean().backward()

    fns = {
        "bare": bare,
        "bim": bim_step,
        "mi": mi_only,
        "cc": cc_only,
        "heads": heads_only,
        "warp": warp_only,
    }
    return fns, draw, data.close


def profile_size(args: argparse.Namespace, size: int, tmp: Path) -> None:
    """Top operators (self CPU time) of the bim step and of the bare passes (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    fns, _, close = _setup(args, size, tmp)
    close()
    for name in ("bare", "bim"):
        for _ in range(args.warmup):
            fns[name]()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeats):
                fns[name]()
        print(f"== {name} step, {size}x{size} px, {args.repeats} steps (times summed) ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


def bench_size(args: argparse.Namespace, size: int, tmp: Path) -> None:
    """Measure and print the bim step against the bare passes at one slice size."""
    fns, draw, close = _setup(args, size, tmp)
    bare, bim_step = fns["bare"], fns["bim"]
    heads = args.heads
    times = _interleaved_times(fns, args.repeats, args.warmup)
    med = {n: statistics.median(v) for n, v in times.items()}
    ratios = [b / a for a, b in zip(times["bare"], times["bim"], strict=True)]
    cpu = _interleaved_times(
        {"bare": bare, "bim": bim_step}, args.repeats, 0, clock=time.process_time
    )
    cpu_ratios = [b / a for a, b in zip(cpu["bare"], cpu["bim"], strict=True)]
    faults = {n: _page_faults(fns[n]) for n in ("bare", "bim")}
    t_load = statistics.median(_interleaved_times({"load": draw}, 5 * args.repeats, 1)["load"])
    close()

    t_bim = med["bim"]

    def share(t: float) -> str:
        return f"{t * 1e3:8.1f} ms  = {100 * t / t_bim:5.1f} % of the bim step"

    print(
        f"settings: {size}x{size} px, batch {args.batch}, U-Net width {args.width}, "
        f"K={args.k}, {heads} heads, torch threads {args.threads}, workers {args.workers}, "
        f"{args.repeats} interleaved repeats, malloc {args.malloc}"
    )
    print(f"bare two U-Net fwd/bwd + optimiser step : {med['bare'] * 1e3:8.1f} ms")
    print(f"bim pre-training step                   : {t_bim * 1e3:8.1f} ms")
    print(
        f"ratio bim / bare                        : {statistics.median(ratios):8.2f}  "
        f"(target <= 1.3; per-repeat range {min(ratios):.2f}-{max(ratios):.2f})"
    )
    print(
        f"ratio of process CPU time               : {statistics.median(cpu_ratios):8.2f}  "
        f"(bare {statistics.median(cpu['bare']) * 1e3:.0f} ms, "
        f"bim {statistics.median(cpu['bim']) * 1e3:.0f} ms)"
    )
    print(f"minor page faults per step              : bare {faults['bare']}, bim {faults['bim']}")
    print(f"mi_loss fwd+bwd ({heads} heads, batched)      : {share(med['mi'])}")
    print(f"cc_loss fwd+bwd ({heads} heads, batched)      : {share(med['cc'])}")
    print(f"cluster heads fwd+bwd (2 views)         : {share(med['heads'])}")
    print(f"feature warp T(s(x)) fwd+bwd            : {share(med['warp'])}")
    print(
        f"loader + base augmentation              : {1 / t_load:8.1f} batches/s vs "
        f"{1 / t_bim:.1f} steps/s consumed = {t_bim / t_load:.1f}x  (target >= 3x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs="+", default=[128], help="slice side(s) (px)")
    ap.add_argument("--width", type=int, default=16, help="U-Net base width (16 = paper)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--heads", type=int, default=3, help="cluster sub-heads (3 = paper)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0, help="data.num_workers")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="instead of timing: print the N top operators (self CPU time, torch.profiler) of "
        "--repeats bim steps and of as many bare passes",
    )
    ap.add_argument(
        "--malloc",
        choices=["default", "keep"],
        default="keep",
        help="keep (the engine's train.cpu_allocator default): glibc keeps freed memory for "
        "reuse; default: glibc's own setting (see the module docstring)",
    )
    args = ap.parse_args()
    if args.malloc == "keep":
        _keep_freed_memory()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bim-"))
    for i, size in enumerate(args.size):
        if i:
            print()
        (profile_size if args.profile else bench_size)(args, size, tmp)


if __name__ == "__main__":
    main()
