"""How long the everyday commands take to answer: ``segssl --help``, ``segssl methods``,
``segssl sweep ... --dry-run`` and ``segssl table X``, medians of several runs.

X is a shipped paper sweep (default ``bim_table3_alpha.yaml``: 150 planned trials). Before the
timings, the bench writes a finished study of X into a fresh SQLite MLflow store: one parent run
and one FINISHED child run per planned trial, with the params, tags and metrics a real trial logs
(the flattened config, trial key and stage tags, ``test/dsc``, a ``val/dsc`` history of 10
epochs), so ``table`` reads a study of the real size. The dry runs are of ``demo.yaml`` (its data,
tiny phantoms, are written first) and of X under ``--profile smoke`` (X's paper protocol asks for
a GPU, so its dry run is refused on a CPU-only machine); ``--no-cost`` where the tree has a cost
estimate, so that the dry run's own work is timed, not a calibration run. Each command is a fresh
process, as a user runs it. Wall time and CPU time (user + system of the command and its
children) are both reported: on a shared, loaded machine the wall time mostly measures the
other jobs.

Several source trees can be timed side by side in one run (``--tree`` repeated, e.g. a
``git worktree`` of the old commit beside this one); their runs are interleaved, so before/after
figures share the machine's load. A tree is put first on ``PYTHONPATH`` and run as
``python -m segssl.cli``; a command whose option the tree does not have is shown as ``n/a``.

Usage: python bench/bench_cli.py [--sweep experiments/sweeps/bim_table3_alpha.yaml]
       [--repeats 5] [--tree OLD_CHECKOUT --tree .]
"""

from __future__ import annotations

import argparse
import os
import resource
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


def run_once(tree: Path, args: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """Wall time, CPU time (user + system, the process and its children), exit status and
    stderr tail of ``python -m segssl.cli ARGS`` from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "COLUMNS": "120"}
    env.pop("MLFLOW_TRACKING_URI", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "segssl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, proc.stderr[-500:]


def commands(tree: Path, sweep: Path, uri: str, work: Path) -> dict[str, list[str] | None]:
    """The timed commands as ``tree`` spells them (None: an option the tree does not have)."""
    cli = (tree / "segssl" / "cli.py").read_text()
    no_cost = ["--no-cost"] if '"--cost/--no-cost"' in cli else []
    own = tree / "experiments" / "sweeps" / sweep.name  # each tree reads its own copy
    x = str(own if own.is_file() else sweep)
    demo = tree / "experiments" / "sweeps" / "demo.yaml"
    smoke = '"--profile"' in cli and "profiles:" in Path(x).read_text()
    return {
        "--help": ["--help"],
        "methods": ["methods"],
        "sweep demo.yaml --dry-run": [
            "sweep", str(demo), "--dry-run", *no_cost, "--storage", str(work / "demo-runs")
        ],
        "sweep X --dry-run --profile smoke": [
            "sweep", x, "--dry-run", "--profile", "smoke", *no_cost,
            "--storage", str(work / "smoke-runs"),
        ]
        if smoke
        else None,
        "table X": ["table", x, "--tracking-uri", uri, "--no-log"],
    }  # fmt: skip


def demo_data(work: Path) -> None:
    """The phantoms ``demo.yaml``'s dry run checks (its data root, relative to ``work``)."""
    from segssl.orchestrate.spec import load_sweep

    spec = load_sweep(HERE / "experiments" / "sweeps" / "demo.yaml")
    root = work / spec.base["data"]["root"]
    if not root.exists():
        from segssl.data import synthesize

        synthesize("acdc", root, scans=20, size=32, seed=0)


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
        demo_data(work)
        print(f"study of {sweep.name} written in {time.perf_counter() - t0:.0f} s: {uri}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        argv = {t: commands(t, sweep, uri, work) for t in trees}
        times: dict[tuple[str, Path], list[tuple[float, float]]] = {}
        failed: set[tuple[str, Path]] = set()
        for r in range(args.repeats):  # interleaved: every tree's run of a command in turn
            for label in argv[trees[0]]:
                for tree in trees:
                    cmd = argv[tree][label]
                    if cmd is None:
                        continue
                    wall, cpu, rc, err = run_once(tree, cmd, work)
                    times.setdefault((label, tree), []).append((wall, cpu))
                    print(f"  run {r + 1} {tree.name}: {label}: wall {wall:.2f} s, CPU {cpu:.2f} s")
                    if rc != 0 and (label, tree) not in failed:
                        failed.add((label, tree))
                        print(f"  ! {tree}: segssl {' '.join(cmd)} exit {rc}: {err}")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(
            f"medians of {args.repeats} runs, seconds as wall / CPU (user + system); "
            f"X = {sweep.name}; ! = non-zero exit"
        )
        print(f"{'command':<34}" + "".join(f"{t.name[:24]:>26}" for t in trees))
        for label in argv[trees[0]]:
            cells = []
            for tree in trees:
                got = times.get((label, tree))
                mark = "!" if (label, tree) in failed else " "
                cell = "n/a"
                if got:
                    wall = statistics.median(w for w, _ in got)
                    cpu = statistics.median(c for _, c in got)
                    cell = f"{wall:.2f} / {cpu:.2f}"
                cells.append(f"{cell:>24}{mark:>2}")
            print(f"{label:<34}" + "".join(cells))


if __name__ == "__main__":
    main()
