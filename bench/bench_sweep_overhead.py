"""Overhead of Ray Tune + MLflow per trial against the trial's own compute.

Runs 8 trivial trials (a fixed amount of busy CPU work each, reported over 3 epochs) at
concurrency 2 through the real runner (local Ray, MLflow on SQLite) and compares, in one run:

- the sweep's makespan against the ideal makespan of the same compute at the same concurrency
  (sum of compute / concurrency); the difference x concurrency / trials is the overhead per trial;
- the same compute run back to back in this process (no Ray, no MLflow) as a reference.

Ray start-up (``ray.init``) is measured separately: it is paid once per sweep, not per trial.

The figures printed, all from one run: the overhead per trial averaged over the trials (the
target's figure), split into the one-time start-up of the stage (sweep call -> first trial
running; paid once per stage, so divided by the trials sharing it) and the marginal overhead per
trial once trials run; the start-up is broken down from each trial worker's process start time
(``/proc``): driver checks + Tune until the trainable actor's process exists, then that process's
own start (Python, ``import ray``, torch, mlflow + SQLite store, ray.tune, segssl) until its MLflow
run is created; the imports that process pays are timed alone in a fresh interpreter beside it.

Why the runner does not pre-warm workers (checked on Ray 2.60, pids logged in task and trial):
a worker that has run a task is never handed an actor, and Tune creates its trainable actor
with its own ``runtime_env`` (``env_vars`` such as ``PL_DISABLE_FORK``), so neither warmed task
workers nor Ray's prestarted idle workers receive the trial: every Tuner starts fresh actor
processes that import everything themselves. A ``worker_process_setup_hook`` runs inside that
same fresh process at its start, so it moves the imports rather than overlapping them.

Usage: python bench/bench_sweep_overhead.py [--trials 8] [--concurrency 2] [--work 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TARGET_S = 1.5


def busy(seconds: float) -> float:
    """Spin the CPU for ``seconds`` of process time; return the process time used."""
    t0 = time.process_time()
    x = 0.0
    while time.process_time() - t0 < seconds:
        for i in range(10_000):
            x += i * 1e-9
    return time.process_time() - t0


# what a trial worker imports, timed step by step in a fresh interpreter (argv[1]: tracking URI)
WORKER_IMPORTS = """
import json, sys, time
out, t = {}, time.perf_counter()
def lap(name):
    global t
    out[name] = time.perf_counter() - t
    t = time.perf_counter()
import ray; lap("ray")
import ray.tune; lap("ray.tune")
import torch; lap("torch")
import segssl.methods, segssl.orchestrate.trainable; lap("segssl (methods, trainable)")
from mlflow import MlflowClient; import segssl.orchestrate.tracking; lap("mlflow")
MlflowClient(sys.argv[1]).search_experiments(); lap("mlflow SQLite store (open, query)")
print(json.dumps(out))
"""


def worker_imports(tracking_uri: str) -> dict[str, float]:
    """Seconds of each import a trial worker process pays, in a fresh interpreter (alone)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS, tracking_uri],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def process_start_time() -> float:
    """Wall-clock time (epoch seconds) at which this process started (Linux ``/proc``)."""
    stat = Path("/proc/self/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, ticks since boot
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def trivial_train(cfg, report=None, *, workdir, resume=True) -> dict:  # noqa: ANN001
    """A trial whose own compute is ``cfg.optim.lr`` seconds of CPU, over 3 epochs."""
    entered = time.time()
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for epoch in (1, 2, 3):
        busy(cfg.optim.lr / 3)
        if report is not None:
            report({"train/loss": 1.0 / epoch, "val/dsc": 0.5 + 0.01 * epoch}, epoch)
    compute = time.perf_counter() - t0
    final = {
        "best_epoch": 3.0,
        "test/dsc": 0.6,
        "bench/compute_s": compute,
        "bench/entered": entered,
        "bench/proc_start": process_start_time(),
        "bench/pid": float(os.getpid()),
    }
    if report is not None:
        report(final, 3)
    (wd / "result.json").write_text(json.dumps({"metrics": final}))
    return {"metrics": final}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--work", type=float, default=1.0, help="CPU seconds of compute per trial")
    args = ap.parse_args()

    import ray
    from mlflow import MlflowClient
    from rich.console import Console

    from segssl.orchestrate.runner import run_sweep
    from segssl.orchestrate.spec import parse_sweep

    tmp = Path(tempfile.mkdtemp(prefix="segssl-bench-"))
    (tmp / "store").mkdir()
    spec = parse_sweep(
        {
            "name": "bench-overhead",
            "max_concurrent": args.concurrency,
            "max_failures": 0,
            "seeds": list(range(args.trials)),
            "base": {"method": {"name": "baseline"}, "optim": {"lr": args.work}},
            "stages": {"train": {}},
        }
    )

    # segssl's own import (the method registry imports torch): paid once by any driver,
    # not Ray or MLflow overhead; measured apart
    t0 = time.perf_counter()
    import segssl.methods  # noqa: F401

    t_import = time.perf_counter() - t0

    # reference: the same compute back to back in this process
    t0 = time.perf_counter()
    for _ in range(args.trials):
        busy(args.work)
    ref = time.perf_counter() - t0

    # a fresh SQLite store runs MLflow's schema migrations once (paid once per store, not per
    # sweep or trial): measured apart
    t0 = time.perf_counter()
    MlflowClient(f"sqlite:///{tmp / 'store' / 'mlflow.db'}").search_experiments()
    t_db = time.perf_counter() - t0

    # the imports a trial worker pays, timed alone in a fresh interpreter (breakdown only)
    imports = worker_imports(f"sqlite:///{tmp / 'store' / 'mlflow.db'}")

    t0 = time.perf_counter()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0

    # the driver's own checks (plan, tables, tracking): a dry run
    t0 = time.perf_counter()
    run_sweep(
        spec,
        train_fn=trivial_train,
        storage=tmp / "store",
        root=tmp,
        console=Console(stderr=True, quiet=True),
        live=False,
        dry_run=True,
    )
    t_dry = time.perf_counter() - t0

    t0 = time.perf_counter()
    t_wall0 = time.time()
    out = run_sweep(
        spec,
        train_fn=trivial_train,
        storage=tmp / "store",
        root=tmp,
        console=Console(stderr=True, quiet=True),
        live=False,
    )
    makespan = time.perf_counter() - t0
    ray.shutdown()
    assert out.failed == 0, out

    client = MlflowClient(out.tracking_uri)
    runs = client.search_runs([out.experiment_id], "tags.`segssl.kind` = 'trial'")
    compute = [r.data.metrics["bench/compute_s"] for r in runs]
    walls = [(r.info.end_time - r.info.start_time) / 1000 for r in runs]
    assert len(runs) == args.trials and all(r.info.status == "FINISHED" for r in runs)

    starts = sorted(r.info.start_time / 1000 - t_wall0 for r in runs)
    ends = sorted(r.info.end_time / 1000 - t_wall0 for r in runs)
    first_start = starts[0]  # one-time per-stage start-up: sweep call -> first trial running
    # marginal: from the first trial's start to the last trial's end
    steady = ends[-1] - first_start
    steady_per_trial = (steady - sum(compute) / args.concurrency) * args.concurrency / args.trials
    teardown = makespan - ends[-1]
    ideal = sum(compute) / args.concurrency
    per_trial = (makespan - ideal) * args.concurrency / args.trials
    in_run = sum(w - c for w, c in zip(walls, compute, strict=True)) / len(runs)
    # start-up breakdown from the first trial of each worker process (one process per actor)
    first_by_pid: dict[float, object] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time):
        first_by_pid.setdefault(r.data.metrics["bench/pid"], r)
    spawn = [r.data.metrics["bench/proc_start"] - t_wall0 for r in first_by_pid.values()]
    boot = [
        r.info.start_time / 1000 - r.data.metrics["bench/proc_start"] for r in first_by_pid.values()
    ]
    to_train = [
        r.data.metrics["bench/entered"] - r.info.start_time / 1000 for r in first_by_pid.values()
    ]
    mean = sum(compute) / len(compute)
    w = 46
    print(f"trials={args.trials} concurrency={args.concurrency} work/trial={args.work:.2f} s CPU")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("once per driver/store (not in the figure):")
    print(f"  {'segssl + torch import in the driver':{w}} {t_import:6.2f} s")
    print(f"  {'fresh SQLite store (schema migrations)':{w}} {t_db:6.2f} s")
    print(f"  {'driver checks, dry run (plan, tracking)':{w}} {t_dry:6.2f} s")
    print(f"  {'ray.init (once per sweep)':{w}} {t_init:6.2f} s")
    print(f"{'reference: compute back to back, no Ray/MLflow':{w + 2}} {ref:6.2f} s")
    print(f"{'sweep makespan (Ray + MLflow)':{w + 2}} {makespan:6.2f} s")
    print(f"{'ideal makespan (compute / concurrency)':{w + 2}} {ideal:6.2f} s")
    print(
        f"{'OVERHEAD PER TRIAL (mean over the trials)':{w + 2}} {per_trial:6.2f} s"
        f"  (target <= {TARGET_S} s; {per_trial / mean:.2f} x the trial's compute)"
    )
    print(f"  = (start-up + teardown) x {args.concurrency} / {args.trials} + marginal:")
    print(f"  {'one-time per-stage start-up (call -> 1st trial)':{w}} {first_start:6.2f} s")
    print(
        f"    {'driver checks + Tune until actor processes':{w - 2}} "
        f"{min(spawn):6.2f} s  (first actor process spawned; last at {max(spawn):.2f} s)"
    )
    print(
        f"    {'actor process start -> its MLflow run created':{w - 2}} "
        f"{min(boot):6.2f} s  (max {max(boot):.2f} s: Python, ray, torch, mlflow+SQLite, tune)"
    )
    print(
        f"      worker imports, timed alone in a fresh interpreter "
        f"(sum {sum(imports.values()):.2f} s):"
    )
    for name, sec in imports.items():
        print(f"        {name:{w - 6}} {sec:6.2f} s")
    print(
        f"    {'MLflow run created -> train function entered':{w - 2}} "
        f"{min(to_train):6.2f} s  (max {max(to_train):.2f} s)"
    )
    print(f"  {'teardown (last trial end -> Tuner returns)':{w}} {teardown:6.2f} s")
    print(f"  {'marginal overhead per trial (1st start->last end)':{w}} {steady_per_trial:6.2f} s")
    print(f"    {'of which inside the MLflow run':{w - 2}} {in_run:6.2f} s  (run time - compute)")
    print(
        f"makespan-based: {'PASS' if per_trial <= TARGET_S else 'ABOVE TARGET'}; "
        f"marginal: {'PASS' if steady_per_trial <= TARGET_S else 'ABOVE TARGET'}"
    )


if __name__ == "__main__":
    main()
