"""Benchmark: every registered method's training step against its own bare U-Net passes.

For each method of the registry (or those named with ``--methods``) the script records the
network calls one ``training_step`` makes (``model(x, taps=...)``, ``model.encode(x)``,
``model.features(x, taps)`` and a multi-head decoder's ``model.decode(...)``, with their
inputs), then measures side by side, interleaved as in ``bench_bim_step.py``:

* ``bare``: the same network calls on the same inputs with a trivial loss (the mean of every
  output), backward and the optimiser step: what the step costs without the method's own work;
* ``step``: the method's full step: ``training_step``, backward, optimiser step,
  ``after_step`` (e.g. an EMA teacher's update).

Networks are every module of the model's class in the method (the student and, e.g., an EMA
teacher); a call made without gradients (a teacher's pass) is replayed without them.

The ratio step / bare (median of per-repeat ratios, in wall time and in process CPU time) is the
method's overhead over the passes it needs; the target is <= 1.5 (bim: <= 1.3). Methods are
found through the registry, so a new method is measured without editing this script.

Usage: ``python bench/bench_methods.py [--size 128] [--width 16] [--batch 8] [--repeats 5]
[--methods bim imsat ...] [--malloc keep|default]``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from bench_bim_step import _interleaved_times  # noqa: E402  (run as a script from bench/)

# run-config settings a method needs beyond the defaults (UA-MT's Monte-Carlo dropout needs
# dropout layers in the model; the tests' METHOD_SECTIONS)
_SECTIONS: dict[str, dict[str, dict[str, Any]]] = {"uamt": {"model": {"dropout": 0.1}}}


def _stage(cls: Any) -> str:
    return {(True, False): "finetune", (False, True): "pretrain", (True, True): "semi"}[
        (cls.uses_labeled, cls.uses_unlabeled)
    ]


_ENTRY_POINTS = ("forward", "encode", "features", "decode")


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, list | tuple):
        return type(x)(_detached(v) for v in x)
    return x


class _Recorder:
    """Records the top-level calls (forward with taps, encode) a step makes to every network of
    the method's model class (the student and, e.g., an EMA teacher), with the grad mode."""

    def __init__(self, networks: list[torch.nn.Module]) -> None:
        self.networks, self.calls, self.depth = networks, [], 0

    def _wrap(self, net: torch.nn.Module, kind: str, fn: Callable) -> Callable:
        def call(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if self.depth == 0:
                grad = torch.is_grad_enabled()
                self.calls.append((net, kind, _detached(x), args, kwargs, grad))
            self.depth += 1
            try:
                return fn(x, *args, **kwargs)
            finally:
                self.depth -= 1

        return call

    def __enter__(self) -> _Recorder:
        for net in self.networks:
            for kind in self._kinds(net):
                setattr(net, kind, self._wrap(net, kind, getattr(net, kind)))
        return self

    def __exit__(self, *exc: object) -> None:
        for net in self.networks:
            for kind in self._kinds(net):
                delattr(net, kind)  # back to the class methods

    @staticmethod
    def _kinds(net: torch.nn.Module) -> tuple[str, ...]:
        """The entry points a method may call (``features`` runs the decoder blocks a decoder
        tap needs; ``decode`` is a multi-head decoder's pass on encoder features)."""
        return tuple(k for k in _ENTRY_POINTS if callable(getattr(net, k, None)))


def _outputs(out: Any) -> list[torch.Tensor]:
    if out is None:
        return []
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _outputs(v)]
    return [t for v in out for t in _outputs(v)]


def _mid_run_clock(cfg: Any) -> Any:
    """A clock half-way through the run (ramp-ups under way)."""
    from segssl.methods.base import Clock

    ipe = cfg.train.iters_per_epoch
    total = cfg.train.epochs * ipe
    return Clock(total // 2, cfg.train.epochs // 2, ipe, total)


def bench_method(name: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    """Interleaved step / bare timings of one registered method."""
    from segssl.augment import BaseAugment
    from segssl.config import parse_run_config
    from segssl.data import build_data
    from segssl.engine import build_optimizer
    from segssl.engine.loop import build_method, optimizer_params
    from segssl.methods import get_method
    from segssl.models import build_model

    cls = get_method(name)
    size = args.size
    cfg = parse_run_config(
        {
            "stage": _stage(cls),
            "data": {
                "root": str(root),
                "preprocess": {"size": [size, size], "spacing": None, "fit": "resize"},
                "batch_size": args.batch,
                "unlabeled_batch_size": args.batch,
                "split": {"unit": "scan", "sizes": [4, 1, 1]},
            },
            "augment": {"crop": size},
            "model": {"base_width": args.width, **_SECTIONS.get(name, {}).get("model", {})},
            "method": {"name": name},
            "train": {"init_from": None},
        }
    )
    data = build_data(cfg.data, seed=0, labeled=cls.uses_labeled, unlabeled=cls.uses_unlabeled)
    aug, gen = BaseAugment(cfg.augment), torch.Generator().manual_seed(0)

    def draw(it: Any) -> dict | None:
        if it is None:
            return None
        b = next(it)
        b["image"], label = aug(b["image"], b.get("label"), generator=gen)
        if label is not None:
            b["label"] = label
        return b

    lab = draw(data.labeled) if cls.uses_labeled else None
    unl = draw(data.unlabeled) if cls.uses_unlabeled else None
    data.close()
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes)
    gen = torch.Generator().manual_seed(1)
    method = build_method(
        cfg, cls, model, data.num_classes, tuple(data.class_names), torch.device("cpu"), gen
    ).train()
    # as the engine builds them: the main optimiser, and those a method owns (a discriminator's)
    # stepped by its optimizer_step (in after_step, which the measured step includes)
    opts = {k: build_optimizer(s, named) for k, (s, named) in optimizer_params(cfg, method).items()}
    opt = opts["main"]

    def own_step(key: str, loss: torch.Tensor) -> None:
        opts[key].zero_grad(set_to_none=True)
        loss.backward()
        opts[key].step()

    method._stepper = own_step
    clock = _mid_run_clock(cfg)

    def training_step(lab: dict | None, unl: dict | None) -> dict:
        return method.training_step(lab, unl, clock)

    networks = list({id(m): m for m in method.modules() if isinstance(m, type(model))}.values())
    with _Recorder(networks) as rec:
        training_step(lab, unl)
    calls = rec.calls

    def bare() -> None:
        opt.zero_grad(set_to_none=True)
        outs = []
        for net, kind, x, a, kw, grad in calls:
            with torch.set_grad_enabled(grad):
                out = _outputs(
                    getattr(net, kind)(x, *a, **kw) if kind != "forward" else net(x, *a, **kw)
                )
            outs += [o for o in out if o.requires_grad]
        sum(o.float().mean() for o in outs).backward()
        opt.step()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        training_step(lab, unl)["loss"].backward()
        opt.step()
        method.after_step(clock)

    fns = {"bare": bare, "step": step}
    wall = _interleaved_times(fns, args.repeats, args.warmup)
    cpu = _interleaved_times(fns, args.repeats, 0, clock=time.process_time)

    def ratio(t: dict[str, list[float]]) -> float:
        return statistics.median(s / b for b, s in zip(t["bare"], t["step"], strict=True))

    return {
        "passes": len(calls),
        "bare_ms": 1e3 * statistics.median(cpu["bare"]),
        "step_ms": 1e3 * statistics.median(cpu["step"]),
        "cpu_ratio": ratio(cpu),
        "wall_ratio": ratio(wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="*", default=None, help="default: the whole registry")
    ap.add_argument("--malloc", choices=["default", "keep"], default="keep")
    args = ap.parse_args()
    if args.malloc == "keep":
        from segssl.engine.runtime import keep_freed_memory

        keep_freed_memory()
    torch.set_num_threads(args.threads)
    from segssl.data import synthesize
    from segssl.methods import REGISTRY

    names = args.methods or sorted(REGISTRY)
    root = synthesize(
        "acdc", Path(tempfile.mkdtemp(prefix="bench-methods-")), scans=6, size=args.size, seed=0
    )
    print(
        f"{args.size}x{args.size} px, batch {args.batch}, U-Net width {args.width}, "
        f"torch threads {args.threads}, {args.repeats} interleaved repeats, malloc {args.malloc}\n"
    )
    print(
        "| method | U-Net passes | bare (CPU ms) | step (CPU ms) | step/bare CPU | step/bare wall |"
    )
    print("|---|---|---|---|---|---|")
    for name in names:
        r = bench_method(name, args, root)
        print(
            f"| {name} | {r['passes']} | {r['bare_ms']:.0f} | {r['step_ms']:.0f} | "
            f"{r['cpu_ratio']:.2f} | {r['wall_ratio']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
