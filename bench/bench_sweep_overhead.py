"""Overhead of Ray Tune + MLflow per trial against the trial's own compute.

Runs 8 trivial trials (a fixed amount of busy CPU work each, reported over 3 epochs) at
concurrency 2 through the real runner (local Ray, MLflow on SQLite) and compares, in one run:

- the sweep's makespan against the ideal makespan of the same compute at the same concurrency
  (sum of compute / concurrency); the difference x concurrency / trials is the overhead per trial;
- the same compute run back to back in this process (no Ray, no MLflow) as a reference.

Ray start-up (``ray.init``) is measured separately: it is paid once per sweep, not per trial.

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


def trivial_train(cfg, report=None, *, workdir, resume=True) -> dict:  # noqa: ANN001
    """A trial whose own compute is ``cfg.optim.lr`` seconds of CPU, over 3 epochs."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for epoch in (1, 2, 3):
        busy(cfg.optim.lr / 3)
        if report is not None:
            report({"train/loss": 1.0 / epoch, "val/dsc": 0.5 + 0.01 * epoch}, epoch)
    compute = time.perf_counter() - t0
    final = {"best_epoch": 3.0, "test/dsc": 0.6, "bench/compute_s": compute}
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

    t0 = time.perf_counter()
    ray.init(num_cpus=args.concurrency, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0

    # a fresh SQLite store runs MLflow's schema migrations once (paid once per store, not per
    # sweep or trial): measured apart
    t0 = time.perf_counter()
    MlflowClient(f"sqlite:///{tmp / 'store' / 'mlflow.db'}").search_experiments()
    t_db = time.perf_counter() - t0

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
    first_start = starts[0]
    # steady state: from the first trial's start to the last trial's end
    steady = ends[-1] - first_start
    steady_per_trial = (steady - sum(compute) / args.concurrency) * args.concurrency / args.trials
    ideal = sum(compute) / args.concurrency
    per_trial = (makespan - ideal) * args.concurrency / args.trials
    in_run = sum(w - c for w, c in zip(walls, compute, strict=True)) / len(runs)
    print(f"trials={args.trials} concurrency={args.concurrency} work/trial={args.work:.2f} s CPU")
    print(f"segssl + torch import (once):         {t_import:6.2f} s")
    print(f"ray.init (once per sweep):            {t_init:6.2f} s")
    print(f"fresh SQLite store (once per store):  {t_db:6.2f} s")
    print(f"reference, compute back to back:      {ref:6.2f} s")
    print(f"sweep makespan (Ray + MLflow):        {makespan:6.2f} s")
    print(f"ideal makespan (compute/concurrency): {ideal:6.2f} s")
    print(f"overhead per trial (makespan-based):  {per_trial:6.2f} s  (target <= {TARGET_S} s)")
    print(f"  = one-time start-up / {args.trials} trials + steady-state overhead per trial:")
    print(f"    driver checks (dry run: plan, tracking): {t_dry:6.2f} s")
    print(
        f"  sweep start -> first trial running: {first_start:6.2f} s  (plan, MLflow, actor start)"
    )
    print(
        f"  steady-state overhead per trial:    {steady_per_trial:6.2f} s  (first start->last end)"
    )
    print(f"  of which inside the MLflow run:     {in_run:6.2f} s  (run start->end minus compute)")
    print(f"overhead / compute per trial:         {per_trial / (sum(compute) / len(compute)):6.2f}")
    print(
        f"makespan-based: {'PASS' if per_trial <= TARGET_S else 'ABOVE TARGET'}; "
        f"steady-state: {'PASS' if steady_per_trial <= TARGET_S else 'ABOVE TARGET'}"
    )


if __name__ == "__main__":
    main()
