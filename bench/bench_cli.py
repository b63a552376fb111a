"""How long the everyday commands take to answer: ``segssl --help``, ``segssl methods``,
``segssl sweep X --dry-run`` and ``segssl table X``, medians of several runs.

X is a shipped paper sweep (default ``bim_table3_alpha.yaml``: 150 planned trials). Before the
timings, the bench writes a finished study of X into a fresh SQLite MLflow store: one parent run
and one FINISHED child run per planned trial, with the params, tags and metrics a real trial logs
(the flattened config, trial key and stage tags, ``test/dsc``, a ``val/dsc`` history of 10
epochs), so ``table`` and ``--dry-run`` read a study of the real size. Each command is a fresh
process, as a user runs it.

Several source trees can be timed side by side in one run (``--tree`` repeated, e.g. a
``git worktree`` of the old commit beside this one), so before/after figures share the machine's
load. A tree is put first on ``PYTHONPATH`` and run as ``python -m segssl.cli``.

Usage: python bench/bench_cli.py [--sweep experiments/sweeps/bim_table3_alpha.yaml]
       [--repeats 5] [--tree OLD_CHECKOUT --tree .]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def write_study(sweep: Path, workdir: Path) -> str:
    """Plan ``sweep`` and write one FINISHED MLflow run per planned trial; return the URI."""
    sys.path.insert(0, str(HERE))
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.spec import load_sweep, spec_hash

    os.chdir(workdir)  # MLflow's default artifact root (./mlruns) lands in the scratch folder
    spec = load_sweep(sweep)
    plan = plan_sweep(spec, source=str(sweep), storage=workdir / "storage", root=workdir)
    for root in sorted({str(t.config.data.root) for t in plan.all_trials()}):
        if not Path(root).exists():  # the dry run checks the data: tiny phantoms stand in
            from segssl.data import synthesize

            synthesize(plan.all_trials()[0].config.data.dataset, root, scans=10, size=32, seed=0)
    uri = f"sqlite:///{workdir / 'storage' / 'mlflow.db'}"
    (workdir / "storage").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(
        spec.name, tags={"segssl.spec_hash": spec_hash(spec), "segssl.sweep": spec.name}
    )
    parent = client.create_run(
        exp, run_name=f"{spec.name} sweep", tags={"segssl.kind": "sweep", "segssl.role": "parent"}
    ).info.run_id
    for i, t in enumerate(plan.all_trials()):
        tags = {
            "mlflow.parentRunId": parent,
            "segssl.kind": "trial",
            "segssl.stage": t.stage,
            "segssl.trial_key": t.key,
            "segssl.sweep": spec.name,
        }
        if t.parent_key:
            tags["segssl.parent_key"] = t.parent_key
        rid = client.create_run(exp, run_name=t.name, tags=tags).info.run_id
        dsc = 0.5 + 0.3 * ((i * 7919) % 97) / 97
        ms = [Metric("val/dsc", dsc - 0.02 * (9 - e), 0, e) for e in range(10)]
        ms += [Metric("test/dsc", dsc, 0, 10), Metric("best_epoch", 9, 0, 10)]
        params = [Param(k, str(v)[:6000]) for k, v in t.params().items()]
        for j in range(0, len(params), 100):
            client.log_batch(rid, metrics=ms if j == 0 else [], params=params[j : j + 100], tags=[])
        client.log_batch(rid, tags=[RunTag("segssl.attempts", "1")])
        client.set_terminated(rid, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return uri


def time_command(tree: Path, args: list[str], cwd: Path, repeats: int) -> tuple[float, int]:
    """Median wall time of ``python -m segssl.cli ARGS`` over ``repeats`` fresh processes."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    env.pop("MLFLOW_TRACKING_URI", None)
    times, rc = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "segssl.cli", *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            rc = proc.returncode
            print(f"  ! {tree}: segssl {' '.join(args)} exit {rc}: {proc.stderr[-500:]}")
    return statistics.median(times), rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sweep", type=Path, default=HERE / "experiments" / "sweeps" / "bim_table3_alpha.yaml"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tree", type=Path, action="append", default=None)
    args = ap.parse_args()
    trees = [p.resolve() for p in (args.tree or [HERE])]
    sweep = args.sweep.resolve()
    with tempfile.TemporaryDirectory(prefix="segssl-bench-cli-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        uri = write_study(sweep, work)
        print(f"study of {sweep.name} written in {time.perf_counter() - t0:.0f} s: {uri}")
        storage = str(work / "storage")
        commands = {
            "--help": ["--help"],
            "methods": ["methods"],
            "sweep X --dry-run": ["sweep", str(sweep), "--dry-run", "--storage", storage],
            "table X": ["table", str(sweep), "--tracking-uri", uri, "--no-log"],
        }
        header = f"{'command':<20}" + "".join(f"{t.name[:24]:>26}" for t in trees)
        print(f"medians of {args.repeats} runs (s); sweep X = {sweep.name}")
        print(header)
        for label, argv in commands.items():
            cells = []
            for tree in trees:
                own = tree / "experiments" / "sweeps" / sweep.name  # each tree reads its own copy
                cmd = [str(own) if a == str(sweep) and own.is_file() else a for a in argv]
                med, rc = time_command(tree, cmd, work, args.repeats)
                cells.append(f"{med:>24.2f}{'!' if rc else ' ':>2}")
            print(f"{label:<20}" + "".join(cells))


if __name__ == "__main__":
    main()
