"""End-to-end GPU check of the engine: the real ``segssl train`` on a synthetic ACDC phantom.

Each (method, variant) pair is one ``python -m segssl.cli train`` subprocess (no MLflow: no
``--tracking-uri``), so a crash or a refusal in one variant is reported and the others still run;
the script exits 1 when any run failed or its result is not sane. Per run it reports the wall
time of the subprocess, training iterations/s (from the engine's own ``time/epoch_s`` of the
epochs that neither warm up nor validate), the final train loss, the best validation Dice
(supervised stages), the engine's peak GPU memory (``cost/peak_mem_mb``) and the resolved
runtime of ``result.json`` (device, amp, amp_dtype, grad_scaler, channels_last), checked
against what the variant configures.

Variants: ``auto`` (the engine's default: fp32 + channels_last on CUDA), ``fp16-stock``
(``amp: on``, float16, ``torch.amp.GradScaler``), ``fp16-sync_free`` (float16,
``SyncFreeGradScaler``), ``bf16`` (bfloat16, no scaler). Methods: ``baseline`` (finetune,
CE + Dice, 4 labeled scans) and ``bim`` (pretrain, the paper's loss settings).

``--cpu`` runs the same code path at tiny sizes on the CPU (``train.device: cpu``). There the
AMP variants are still launched, and the engine refuses them before any work
("train.amp=on needs a CUDA device"): the report shows that refusal as the run's ``error`` and
``expect_refusal`` marks it as expected (such a run does not count as a failure).

Usage (GPU): ``python bench/gpu_engine_check.py --json engine_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]

VARIANTS: dict[str, dict[str, str]] = {
    "auto": {},
    "fp16-stock": {"amp": "on", "amp_dtype": "float16", "grad_scaler": "stock"},
    "fp16-sync_free": {"amp": "on", "amp_dtype": "float16", "grad_scaler": "sync_free"},
    "bf16": {"amp": "on", "amp_dtype": "bfloat16"},
}
METHODS = ("baseline", "bim")
REFUSAL = "needs a CUDA device"  # the engine's message for AMP forced on without CUDA


def sizes(cpu: bool) -> dict[str, Any]:
    """Problem sizes: the GPU check's, or the CPU smoke mode's tiny ones."""
    if cpu:
        return dict(px=32, width=4, batch=2, epochs=3, iters=2, subjects=4, split=[2, 1, 1], k=4)
    return dict(px=128, width=16, batch=16, epochs=4, iters=30, subjects=10, split=[6, 2, 2], k=40)


def run_config(method: str, variant: str, s: dict[str, Any], data: Path, cache: Path, cpu: bool):
    """The run config of one (method, variant) pair as a plain dict (validated by the engine)."""
    pre = {"size": [s["px"], s["px"]], "spacing": None, "fit": "resize"}
    train = {
        "epochs": s["epochs"],
        "iters_per_epoch": s["iters"],
        "val_every": s["epochs"],  # validate only in the last epoch: the middle ones time steps
        "eval_batch_size": 32,
        "progress": False,
        "pictures": 0,
        "device": "cpu" if cpu else "cuda",
        **VARIANTS[variant],
    }
    common = {
        "seed": 0,
        "augment": {"crop": s["px"]},
        "optim": {"name": "radam", "lr": 1.0e-3, "warmup_factor": 1, "warmup_epochs": 0},
        "train": train,
    }
    data_cfg = {
        "dataset": "acdc",
        "root": str(data),
        "cache": str(cache),
        "preprocess": pre,
        "split": {"unit": "subject", "sizes": s["split"]},
    }
    if method == "baseline":
        return {
            **common,
            "stage": "finetune",
            "data": {**data_cfg, "target": "lv", "labeled_scans": 4, "batch_size": s["batch"]},
            "model": {"base_width": s["width"]},
            "method": {"name": "baseline"},
        }
    return {
        **common,
        "stage": "pretrain",
        "data": {**data_cfg, "target": "all", "partitions": 3, "unlabeled_batch_size": s["batch"]},
        "model": {"base_width": s["width"], "freeze": ["Conv_1x1"]},
        "method": {"name": "bim", "k": s["k"]},
    }


def expected_runtime(variant: str, cpu: bool) -> dict[str, Any]:
    """What ``result["runtime"]`` must say for ``variant``."""
    v = VARIANTS[variant]
    amp = v.get("amp") == "on"
    dtype = v.get("amp_dtype") if amp else None
    return {
        "device": "cpu" if cpu else "cuda",
        "amp": amp,
        "amp_dtype": dtype,
        "grad_scaler": v.get("grad_scaler", "stock") if dtype == "float16" else None,
        "channels_last": not cpu,
    }


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "segssl.cli", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=timeout, check=False
    )


def prepare_data(tmp: Path, s: dict[str, Any]) -> tuple[Path, Path, float]:
    """Synthesise the phantom with ``segssl data synth`` and build its cache with ``segssl
    data prepare`` (outside the timed runs); returns (root, cache, seconds)."""
    t0 = time.perf_counter()
    data, cache = tmp / "acdc", tmp / "cache"
    synth = ["data", "synth", "--dataset", "acdc", "--out", str(data)]
    done = _cli(*synth, "--scans", str(s["subjects"]), "--size", str(s["px"]), timeout=300)
    if done.returncode:
        raise RuntimeError(f"segssl data synth failed:\n{done.stdout}\n{done.stderr}")
    px = s["px"]
    prep = ["data", "prepare", "--dataset", "acdc", "--root", str(data), "--out", str(cache)]
    prep += ["-o", f"size=[{px},{px}]", "-o", "spacing=null", "-o", "fit=resize"]
    done = _cli(*prep, timeout=300)
    if done.returncode:
        raise RuntimeError(f"segssl data prepare failed:\n{done.stdout}\n{done.stderr}")
    return data, cache, time.perf_counter() - t0


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-3:]) if lines else "(no output)"


def summarise(result: dict, iters: int, epochs: int) -> dict[str, Any]:
    """The report's fields from a run's ``result.json``."""
    hist, m = result["history"], result["metrics"]
    # epochs 2 .. N-1 neither warm up (cuDNN, allocator) nor validate; fall back to all of them
    timed = [h["time/epoch_s"] for h in hist[1:-1]] or [h["time/epoch_s"] for h in hist]
    loss = hist[-1].get("train/loss")
    row = {
        "epochs": len(hist),
        "iters_per_s": iters * len(timed) / sum(timed),
        "epoch_s": [round(h["time/epoch_s"], 3) for h in hist],
        "final_train_loss": loss,
        "best_val_dsc": m.get("best_val/dsc"),
        "peak_mem_mb": m.get("cost/peak_mem_mb"),
        "engine_wall_s": m.get("cost/wall_s"),
        "runtime": result["runtime"],
    }
    problems = []
    if len(hist) != epochs:
        problems.append(f"{len(hist)} epochs in history, expected {epochs}")
    if loss is None or not math.isfinite(loss):
        problems.append(f"final train loss {loss!r} is not finite")
    dsc = row["best_val_dsc"]
    if result["stage"] != "pretrain" and (dsc is None or not 0.0 <= dsc <= 1.0):
        problems.append(f"best val Dice {dsc!r} not in [0, 1]")
    row["problems"] = problems
    return row


def run_one(
    method: str, variant: str, s: dict, data: Path, cache: Path, tmp: Path, cpu: bool, limit: float
) -> dict[str, Any]:
    """Train one (method, variant) pair in a subprocess (killed after ``limit`` seconds) and
    summarise it (never raises for a failed run)."""
    name = f"{method}-{variant}"
    cfg_path, workdir = tmp / f"{name}.yaml", tmp / "runs" / name
    cfg_path.write_text(yaml.safe_dump(run_config(method, variant, s, data, cache, cpu)))
    row: dict[str, Any] = {"method": method, "variant": variant}
    row["expected_runtime"] = want = expected_runtime(variant, cpu)
    row["expect_refusal"] = cpu and want["amp"]
    t0 = time.perf_counter()
    try:
        done = _cli("train", str(cfg_path), "--workdir", str(workdir), "--no-resume", timeout=limit)
    except subprocess.TimeoutExpired:
        row.update(ok=False, wall_s=time.perf_counter() - t0, error=f"timed out after {limit} s")
        return row
    row["wall_s"] = time.perf_counter() - t0
    result_path = workdir / "result.json"
    if done.returncode or not result_path.is_file():
        row["ok"] = False
        row["error"] = f"exit {done.returncode}: {_last_error(done.stderr or done.stdout)}"
        row["refused_as_expected"] = row["expect_refusal"] and REFUSAL in row["error"]
        return row
    row.update(summarise(json.loads(result_path.read_text()), s["iters"], s["epochs"]))
    if row["runtime"] != want:
        row["problems"].append(f"runtime {row['runtime']} != configured {want}")
    if row["expect_refusal"]:
        row["problems"].append("AMP on CPU was expected to be refused, but the run trained")
    row["ok"] = not row["problems"]
    return row


def _fmt(v: Any, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if v is None else format(v, spec)


def print_table(rows: list[dict]) -> None:
    head = f"{'method':9} {'variant':15} {'wall s':>7} {'it/s':>7} {'loss':>8} {'val dsc':>7} "
    print(head + f"{'peak MB':>8}  runtime / error")
    for r in rows:
        rt = r.get("runtime")
        if rt is not None:
            tail = (
                f"{rt['device']} amp={rt['amp']} dtype={rt['amp_dtype']} "
                f"scaler={rt['grad_scaler']} cl={rt['channels_last']}"
            )
            tail += "" if r["ok"] else f"  PROBLEMS: {'; '.join(r['problems'])}"
        else:
            label = "REFUSED (expected on CPU)" if r.get("refused_as_expected") else "ERROR"
            tail = f"{label}: {r['error']}"
        print(
            f"{r['method']:9} {r['variant']:15} {_fmt(r.get('wall_s'), '7.1f')} "
            f"{_fmt(r.get('iters_per_s'), '7.2f')} {_fmt(r.get('final_train_loss'), '8.4f')} "
            f"{_fmt(r.get('best_val_dsc'), '7.3f')} {_fmt(r.get('peak_mem_mb'), '8.0f')}  {tail}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (smoke mode)")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--run-timeout", type=float, default=100.0, help="seconds per run")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: temp)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the check; returns the report (``failed`` lists the runs that did not pass)."""
    args = parse_args(argv)
    s = sizes(args.cpu)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segssl-engine-check-") as scratch:
        tmp = args.keep or Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        data, cache, prep_s = prepare_data(tmp, s)
        print(f"phantom: {s['subjects']} ACDC subjects at {s['px']} px, prepared in {prep_s:.1f} s")
        rows = []
        for method in args.methods:
            for variant in args.variants:
                row = run_one(method, variant, s, data, cache, tmp, args.cpu, args.run_timeout)
                if not row["ok"] and not row.get("refused_as_expected"):
                    print(f"FAILED {method} {variant}: {row.get('error') or row['problems']}")
                rows.append(row)
    failed = [
        f"{r['method']}-{r['variant']}"
        for r in rows
        if not r["ok"] and not r.get("refused_as_expected")
    ]
    report = {
        "device": "cpu" if args.cpu else "cuda",
        "sizes": s,
        "prepare_s": prep_s,
        "total_s": time.perf_counter() - t0,
        "runs": rows,
        "failed": failed,
    }
    print_table(rows)
    print(f"total {report['total_s']:.1f} s; " + (f"FAILED: {failed}" if failed else "all passed"))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
