"""Benchmark: what an epoch of each ``segssl demo`` stage costs, and the demo's total.

The demo's own trial configs (``segssl.demo.demo_spec`` planned exactly as ``segssl demo`` plans
them, on freshly synthesised phantoms) are trained in this process by ``engine.train`` for a few
epochs of the demo's 50 iterations, in a rotating order (baseline at 1 scan, full supervision,
bim pre-training, fine-tuning from that pre-training), ``--repeats`` times. Every run is timed in
process CPU time (the figure to read on a shared machine) and wall time, split into the
training steps, the validation, the per-epoch checkpoint and the run's set-up and end (test,
pictures, result). One torch thread, as a Ray trial with ``cpu: 1`` gets.

From the medians it estimates the demo's total on 2 idle cores: each trial is set-up + 10
epochs + end; the trials are then packed on 2 slots the way the runner launches them, once with
a barrier after every stage (one Tune run per stage, the runner before waves) and once by waves
(independent stages share one Tune run, the stages with children first). Ray's start, the trial
actors' start-up and MLflow are not included (see the printout).

Usage: ``python bench/bench_demo.py [--epochs 1] [--repeats 2] [--slots 2]``.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PARTS = ("steps", "validation", "checkpoint", "setup", "end")


class _Clock:
    """Process CPU and wall seconds per part of a run, accumulated by wrapped engine methods."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = dict.fromkeys(PARTS, 0.0)
        self.wall: dict[str, float] = dict.fromkeys(PARTS, 0.0)

    def wrap(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **k: Any) -> Any:
            c, w = time.process_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.cpu[part] += time.process_time() - c
                self.wall[part] += time.perf_counter() - w

        return timed


def _timed_train(cfg: Any, workdir: Path) -> _Clock:
    """``engine.train(cfg)`` in ``workdir`` with its parts timed."""
    from segssl.engine import loop

    clock = _Clock()
    saved = {
        "_step": loop._Run._step,
        "_validate": loop._Run._validate,
        "finish": loop._Run.finish,
        "prepare": loop._Run.prepare,
        "build": loop._Run.build,
        "save_checkpoint": loop.save_checkpoint,
    }
    loop._Run._step = clock.wrap("steps", saved["_step"])
    loop._Run._validate = clock.wrap("validation", saved["_validate"])
    loop._Run.finish = clock.wrap("end", saved["finish"])
    loop._Run.prepare = clock.wrap("setup", saved["prepare"])
    loop._Run.build = clock.wrap("setup", saved["build"])
    # the per-epoch last.pt (best.pt saves inside validation and finish count there)
    loop.save_checkpoint = clock.wrap("checkpoint", saved["save_checkpoint"])
    try:
        loop.train(cfg, None, workdir=workdir, resume=False)
    finally:
        for name, fn in saved.items():
            setattr(loop if name == "save_checkpoint" else loop._Run, name, fn)
    return clock


def _demo_trials(tmp: Path, epochs: int) -> tuple[dict[str, Any], dict[str, int], Any]:
    """One trial config per stage (seed 0, 1 labeled scan), with ``epochs`` epochs, and the
    number of trials per stage; the plan of the full demo."""
    from segssl.data import synthesize
    from segssl.demo import PHANTOM_PATIENTS, demo_spec
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.spec import parse_sweep

    data = tmp / "data" / "acdc"
    synthesize("acdc", data, scans=PHANTOM_PATIENTS, size=64, seed=0)
    spec = parse_sweep(demo_spec(str(data)), source="bench")
    plan = plan_sweep(spec, source="bench", storage=tmp / "store")
    picked: dict[str, Any] = {}
    for stage, trials in plan.trials.items():
        t = next(t for t in trials if t.seed == 0 and t.config.data.labeled_scans in (1, "100%"))
        train = t.config.train.model_copy(update={"epochs": epochs})
        picked[stage] = (t, t.config.model_copy(update={"train": train}))
    return picked, {s: len(v) for s, v in plan.trials.items()}, plan


def _pack(durations: list[float], slots: int, start: float = 0.0) -> float:
    """End time of ``durations`` launched in order on ``slots`` slots (list scheduling)."""
    free = [start] * slots
    heapq.heapify(free)
    end = start
    for d in durations:
        t = heapq.heappop(free) + d
        end = max(end, t)
        heapq.heappush(free, t)
    return end


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1, help="epochs per measured run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2, help="trials at once (the demo: 2 cores)")
    args = ap.parse_args(argv)
    from segssl.engine.runtime import keep_freed_memory

    keep_freed_memory()
    torch.set_num_threads(1)
    try:
        from segssl.orchestrate.runner import stage_waves
    except ImportError:  # a checkout before waves: one stage per Tune run
        stage_waves = None

    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    picked, counts, plan = _demo_trials(tmp, args.epochs)
    order = [s for s in plan.order if s in picked]
    runs: dict[str, list[_Clock]] = {s: [] for s in order}
    for r in range(args.repeats + 1):  # the first round warms up (imports, allocator)
        rot = order[r % len(order) :] + order[: r % len(order)]
        if "finetune" in rot and r == 0:  # its checkpoint comes from the pre-training run
            rot = [s for s in rot if s != "finetune"] + ["finetune"]
        for stage in rot:
            trial, cfg = picked[stage]
            clock = _timed_train(cfg, Path(plan.storage) / "trials" / trial.key)
            if r:
                runs[stage].append(clock)
    demo_epochs = plan.trials[order[0]][0].config.train.epochs
    per_trial: dict[str, float] = {}
    per_epoch: dict[str, float] = {}
    print(
        f"settings: the demo's trial configs, {args.epochs} epoch(s) of "
        f"{plan.trials[order[0]][0].config.train.iters_per_epoch} iterations per run, "
        f"{args.repeats} interleaved repeats, 1 torch thread; medians, process CPU s (wall s)"
    )
    print(f"{'stage':10} {'epoch':>14} " + " ".join(f"{p:>16}" for p in PARTS))
    for stage in order:
        med = {
            p: (
                statistics.median(c.cpu[p] for c in runs[stage]),
                statistics.median(c.wall[p] for c in runs[stage]),
            )
            for p in PARTS
        }
        epoch_cpu = sum(med[p][0] for p in ("steps", "validation", "checkpoint")) / args.epochs
        epoch_wall = sum(med[p][1] for p in ("steps", "validation", "checkpoint")) / args.epochs
        per_epoch[stage] = epoch_cpu
        per_trial[stage] = med["setup"][0] + med["end"][0] + demo_epochs * epoch_cpu
        cells = " ".join(f"{med[p][0]:7.2f} ({med[p][1]:6.2f})" for p in PARTS)
        print(f"{stage:10} {epoch_cpu:6.2f} ({epoch_wall:5.2f}) {cells}")
    if "baseline" in per_epoch:
        print(
            "CPU time relative to the baseline, per epoch: "
            + ", ".join(f"{s} {per_epoch[s] / per_epoch['baseline']:.2f}" for s in order)
            + f"; per trial of {demo_epochs} epochs: "
            + ", ".join(f"{s} {per_trial[s] / per_trial['baseline']:.2f}" for s in order)
        )
    work = {s: per_trial[s] * counts[s] for s in order}
    barrier = 0.0
    for s in order:
        barrier = _pack([per_trial[s]] * counts[s], args.slots, barrier)
    waves = 0.0
    for wave in stage_waves(plan) if stage_waves else [[s] for s in order]:
        waves = _pack([per_trial[s] for s in wave for _ in range(counts[s])], args.slots, waves)
    total = sum(work.values())
    print(
        f"demo estimate on {args.slots} idle cores ({sum(counts.values())} trials, "
        f"{total:.0f} CPU s of training): stage barriers {barrier:.0f} s, waves "
        f"{waves:.0f} s, perfect packing {total / args.slots:.0f} s; plus Ray's start, the "
        "trial actors' start-up (imports) and MLflow, not measured here"
    )
    return {
        "per_epoch_cpu_s": per_epoch,
        "per_trial_cpu_s": per_trial,
        "barrier_s": barrier,
        "waves_s": waves,
    }


if __name__ == "__main__":
    main()
