"""Prepared GPU check: precision, memory format, bim overhead, memory and process packing.

One run (under 8 minutes on one GPU; PyTorch and segssl only, no Ray or MLflow) measures:

* the ``baseline`` step (one supervised U-Net pass, CE + Dice) and the ``bim`` step (paired
  transform, two tapped passes, cluster heads, L_con + L_MI + L_CC), each in fp32, AMP bf16,
  AMP fp16 with the sync-free GradScaler and capturable optimiser (``fp16``: the engine's
  ``train.grad_scaler: sync_free``) and AMP fp16 with PyTorch's GradScaler (``fp16-stock``: the
  engine's fp16 default), each in the default and the ``channels_last`` memory format: time
  per step and the ratio to the same step in fp32;
* ``bare``: the two tapped U-Net passes a bim step needs, and the ratio bim / bare per variant;
* peak device memory of one step of each variant on its own (``torch.cuda.max_memory_allocated``
  over the step, plus the variant's resident weights, gradients, optimiser state and batch; the
  other variants resident in the process are not counted); on CPU the process's peak resident
  size, which is not per step;
* packing: 1, 2 and 4 training processes (bim, the engine's CUDA defaults: fp32 and
  channels_last) on the same device at once, total steps/s relative to one process, i.e. what
  ``gpu: 0.5`` / ``gpu: 0.25`` in a sweep buys.

Every step runs as the engine runs it: autocast around ``training_step``, backward through the
scaler, optimiser step; steps are timed in blocks with one device synchronisation at each end
(no per-step synchronisation). The variants are measured in rotating order over ``--rounds``
rounds and the median is reported.

Usage: ``python bench/gpu_check.py [--size 224] [--batch 16] [--width 16] [--json out.json]``;
``--cpu`` runs everything on the CPU at tiny sizes (a smoke test of the script itself; the
figures mean nothing there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "fp16-stock")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp16-stock": torch.float16}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(args: argparse.Namespace, device: torch.device, num_classes: int = 4) -> dict:
    """A smooth random image batch with labels and partition meta-labels."""
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    low = torch.rand(b, 1, max(s // 8, 2), max(s // 8, 2), generator=g)
    image = torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear")
    label = (image[:, 0] * num_classes).long().clamp_max(num_classes - 1)
    part = torch.arange(b) % 3
    return {"image": image.to(device), "label": label.to(device), "partition": part.to(device)}


def _method(name: str, args: argparse.Namespace, device: torch.device, channels_last: bool):
    """The method as the engine builds it (run config, model registry, method context)."""
    from segssl.config import parse_run_config
    from segssl.engine.loop import build_method
    from segssl.methods import get_method
    from segssl.models import build_model

    pretrain = name == "bim"
    cfg = parse_run_config(
        {
            "stage": "pretrain" if pretrain else "finetune",
            "data": {"root": "unused", "preprocess": {"size": [args.size, args.size]}},
            "augment": {"crop": args.size},
            "model": {"base_width": args.width, "freeze": ["Conv_1x1"] if pretrain else []},
            "method": {"name": name, **({"k": args.k} if pretrain else {})},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    gen = torch.Generator().manual_seed(1)
    method = build_method(cfg, get_method(name), model, 4, ("a", "b", "c"), device, gen)
    method = method.to(device).train()
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    return method, cfg


def make_step(
    kind: str, precision: str, channels_last: bool, args: argparse.Namespace, device: torch.device
) -> Callable[[], None]:
    """One engine-like optimisation step of ``kind`` (baseline, bim or bare)."""
    from segssl.engine import build_optimizer
    from segssl.engine.amp import SyncFreeGradScaler
    from segssl.methods.base import Clock

    method, run = _method("baseline" if kind == "baseline" else "bim", args, device, channels_last)
    fp16 = precision.startswith("fp16")
    stock = precision == "fp16-stock"  # PyTorch's GradScaler: one host read of found_inf a step
    params = [p for p in method.parameters() if p.requires_grad]
    opt = build_optimizer(
        run.optim, params, capturable=fp16 and not stock and device.type == "cuda"
    )
    total = run.train.epochs * run.train.iters_per_epoch
    clock = Clock(total // 2, run.train.epochs // 2, run.train.iters_per_epoch, total)
    batch = _batch(args, device)
    if channels_last:
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    amp = precision != "fp32"
    dtype = _DTYPES.get(precision, torch.float32)
    scaler_cls = torch.amp.GradScaler if stock else SyncFreeGradScaler  # sync-free: no read
    scaler = scaler_cls(device.type, enabled=fp16)
    cfg = getattr(method.cfg, "dense_tap", None), getattr(method.cfg, "global_tap", None)

    def loss() -> torch.Tensor:
        if kind == "bare":  # the two tapped passes a bim step needs, a trivial loss
            x = batch["image"]
            tx = method.T.sample(x.shape[0], generator=method.ctx.generator).image(x)
            feats = [method.model(v, taps=list(cfg))[1] for v in (x, tx)]
            return sum(f.float().mean() for d in feats for f in d.values())
        if kind == "baseline":
            return method.training_step(batch, None, clock)["loss"]
        return method.training_step(None, batch, clock)["loss"]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            value = loss()
        opt.zero_grad(set_to_none=True)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _time_steps(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds per step over ``n`` steps, synchronised only at both ends."""
    _synchronize(device)
    t = time.perf_counter()
    for _ in range(n):
        step()
    _synchronize(device)
    return (time.perf_counter() - t) / n


def _allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device)


def _reset_peak(device: torch.device) -> None:
    torch.cuda.reset_peak_memory_stats(device)


def _max_allocated(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device)


def _build_and_peak(
    variant: tuple, args: argparse.Namespace, device: torch.device
) -> tuple[Callable[[], None], float]:
    """Build a variant's step, warm it up and measure the peak memory of one step (MiB).

    On a GPU the peak is the variant's OWN: what the step allocates on top of the memory resident
    before it, plus what the variant keeps resident (weights, gradients, optimiser state, batch),
    so the other variants built in the same process (all 18 stay resident for the interleaved
    timing) are not counted. On the CPU it is the process's peak resident size.
    """
    cuda = device.type == "cuda"
    if cuda:
        _synchronize(device)
        before_build = _allocated(device)
    fn = make_step(*variant, args, device)
    for _ in range(args.warmup):  # warm-up (cuDNN autotuning, allocator)
        fn()
    if not cuda:
        fn()
        return fn, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    _synchronize(device)
    before_step = _allocated(device)
    _reset_peak(device)
    fn()
    _synchronize(device)
    own = before_step - before_build
    return fn, (_max_allocated(device) - before_step + own) / 2**20


def _supported(precision: str, device: torch.device) -> bool:
    if precision == "bf16" and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


def measure_variants(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Time, ratio to fp32 and peak memory of every (kind, precision, memory format)."""
    variants = [
        (kind, prec, cl)
        for kind in ("bare", "baseline", "bim")
        for prec in args.precisions
        for cl in (False, True)
        if _supported(prec, device)
    ]
    steps, peaks = {}, {}
    for v in variants:
        steps[v], peaks[v] = _build_and_peak(v, args, device)
    times: dict[tuple, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            times[v].append(_time_steps(steps[v], args.steps, device))
    med = {v: statistics.median(t) for v, t in times.items()}
    rows = []
    for kind, prec, cl in variants:
        t = med[(kind, prec, cl)]
        row = {
            "step": kind,
            "precision": prec,
            "channels_last": cl,
            "ms_per_step": 1e3 * t,
            "vs_fp32": t / med[(kind, "fp32", False)],
            "peak_mem_mb": peaks[(kind, prec, cl)],
        }
        if kind == "bim":
            row["bim_over_bare"] = t / med[("bare", prec, cl)]
        rows.append(row)
    return rows


def _worker(args: argparse.Namespace, device: torch.device) -> None:
    """One packed training process: warm up, wait for the common start, run, print a JSON."""
    cuda = device.type == "cuda"
    step = make_step("bim", "fp32", cuda, args, device)  # the engine's default (amp: auto)
    for _ in range(args.warmup):
        step()
    _synchronize(device)
    while time.time() < args.start_at:
        time.sleep(0.005)
    t0 = time.time()
    for _ in range(args.steps):
        step()
    _synchronize(device)
    print(json.dumps({"start": t0, "end": time.time(), "steps": args.steps}), flush=True)


def measure_packing(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Total steps/s of 1, 2 and 4 processes training at once on the device."""
    rows = []
    base = None
    for n in args.procs:
        start_at = time.time() + args.start_delay
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        cmd += ["--start-at", str(start_at), "--steps", str(args.pack_steps)]
        cmd += ["--size", str(args.size), "--batch", str(args.batch), "--width", str(args.width)]
        cmd += ["--k", str(args.k), "--warmup", str(args.warmup)]
        cmd += ["--cpu"] if device.type == "cpu" else []
        env = {**os.environ, "OMP_NUM_THREADS": "1"} if device.type == "cpu" else None
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(n)
        ]
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=args.pack_timeout)
            if p.returncode != 0:
                raise SystemExit(f"packing worker failed with exit code {p.returncode}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
        rate = sum(o["steps"] for o in outs) / span
        base = base or rate
        rows.append({"processes": n, "steps_per_s": rate, "vs_one_process": rate / base})
    return rows


def _print(result: dict[str, Any]) -> None:
    print(f"device: {result['device']}; {result['settings']}")
    print(
        f"{'step':9} {'precision':10} {'ch_last':7} {'ms/step':>9} {'vs fp32':>8} "
        f"{'bim/bare':>8} {'peak MB':>9}"
    )
    for r in result["variants"]:
        ratio = f"{r['bim_over_bare']:.2f}" if "bim_over_bare" in r else ""
        print(
            f"{r['step']:9} {r['precision']:10} {r['channels_last']!s:7} {r['ms_per_step']:9.1f} "
            f"{r['vs_fp32']:8.2f} {ratio:>8} {r['peak_mem_mb']:9.0f}"
        )
    for r in result["packing"]:
        print(
            f"{r['processes']} process(es): {r['steps_per_s']:.2f} steps/s in total "
            f"= {r['vs_one_process']:.2f}x one process"
        )
    print(f"took {result['seconds']:.0f} s")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU at tiny sizes (smoke test)")
    ap.add_argument("--size", type=int, default=None, help="slice side (224; --cpu: 32)")
    ap.add_argument("--batch", type=int, default=None, help="batch (16; --cpu: 2)")
    ap.add_argument("--width", type=int, default=None, help="U-Net base width (16; --cpu: 4)")
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block (10)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over the variants (3)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (5)")
    ap.add_argument("--procs", type=int, nargs="*", default=[1, 2, 4], help="none: no packing")
    ap.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=list(PRECISIONS),
        help="fp16: SyncFreeGradScaler (grad_scaler: sync_free); fp16-stock: torch.amp.GradScaler",
    )
    ap.add_argument("--pack-steps", type=int, default=None, help="steps per packed process (60)")
    ap.add_argument("--pack-timeout", type=float, default=240.0)
    ap.add_argument("--start-delay", type=float, default=None, help="seconds for workers to boot")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.precisions = ["fp32", *dict.fromkeys(p for p in args.precisions if p != "fp32")]
    tiny = {"size": 32, "batch": 2, "width": 4, "steps": 1, "rounds": 1, "warmup": 1}
    full = {"size": 224, "batch": 16, "width": 16, "steps": 10, "rounds": 3, "warmup": 5}
    for key, value in (tiny if args.cpu else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.pack_steps = args.pack_steps or (2 if args.cpu else 60)
    args.start_delay = args.start_delay or (20.0 if args.cpu else 40.0)
    if args.cpu:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("no CUDA device: run with --cpu for the CPU smoke test")
    if args.worker:
        _worker(args, device)
        return None
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "settings": (
            f"{args.size}x{args.size} px, batch {args.batch}, U-Net width {args.width}, "
            f"K={args.k}, {args.steps} steps x {args.rounds} rounds per variant"
        ),
        "variants": measure_variants(args, device),
    }
    result["packing"] = measure_packing(args, device) if args.procs else []
    result["seconds"] = time.perf_counter() - t0
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
