"""BIM pre-training + fine-tuning on 1 labeled scan against the baseline, on a synthetic ACDC.

For each seed: (1) ``bim`` pre-training on all training scans without labels, (2) ``finetune``
from its last checkpoint on 1 labeled scan, (3) ``baseline`` from random weights on the same
labeled scan with the same fine-tuning budget (epochs, iterations, schedule, batch). The run
configs are the example YAMLs under ``experiments/`` with a small CPU budget applied as
overrides (printed below). Test Dice is that of the best validation epoch (the papers' protocol).

Usage::

    python experiments/scripts/bim_vs_baseline.py --out runs/bim_vs_baseline

This is an experiment, not a test: it reports whatever comes out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from segssl.config import apply_overrides, parse_run_config, read_yaml
from segssl.data import synthesize
from segssl.engine import train

EXP = Path(__file__).resolve().parents[1]


def _config(yaml_name: str, overrides: list[str]):
    raw = apply_overrides(read_yaml(EXP / yaml_name), overrides)
    return parse_run_config(raw, source=yaml_name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bim_vs_baseline"))
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--synth-size", type=int, default=96)
    ap.add_argument("--px", type=int, default=64, help="preprocessed slice side")
    ap.add_argument("--width", type=int, default=8, help="U-Net base width")
    ap.add_argument("--target", default="lv")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pre-epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=10)
    ap.add_argument("--pre-iters", type=int, default=30, help="iterations per pre-training epoch")
    ap.add_argument("--ft-iters", type=int, default=50, help="iterations per fine-tuning epoch")
    # the papers' schedule shape (x400 / x200 warm-up, then cosine) with a peak lr of 1e-2:
    # the papers' peaks (2e-4 / 2e-5 over 10000 iterations) barely move a net in a few hundred
    ap.add_argument("--pre-lr", type=float, default=2.5e-5, help="x400 warm-up -> peak 1e-2")
    ap.add_argument("--ft-lr", type=float, default=5e-5, help="x200 warm-up -> peak 1e-2")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = args.out / "acdc"
    if not (root / "training").is_dir():
        synthesize("acdc", root, scans=args.patients, size=args.synth_size, seed=0)
    n_scans = 2 * args.patients
    test, val = max(2, round(0.15 * n_scans)), max(2, round(0.1 * n_scans))
    common = [
        f"data.root={root}",
        f"data.preprocess.size=[{args.px}, {args.px}]",
        "data.preprocess.spacing=null",
        "data.preprocess.fit=resize",
        f"data.split.sizes=[{n_scans - val - test}, {val}, {test}]",
        "data.split.unit=scan",
        f"augment.crop={args.px - 16}",
        f"model.base_width={args.width}",
        "optim.warmup_epochs=2",
        "train.progress=false",
    ]
    pre_o = common + [
        f"train.epochs={args.pre_epochs}",
        f"train.iters_per_epoch={args.pre_iters}",
        f"optim.lr={args.pre_lr}",
    ]
    ft_o = common + [
        f"data.target={args.target}",
        "data.labeled_scans=1",
        f"train.epochs={args.ft_epochs}",
        f"train.iters_per_epoch={args.ft_iters}",
        f"optim.lr={args.ft_lr}",
    ]
    print("pre-training overrides:", " ".join(pre_o))
    print("fine-tuning/baseline overrides:", " ".join(ft_o))
    rows = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        pre_cfg = _config("bim_pretrain.yaml", [*pre_o, f"seed={seed}"])
        pre = train(pre_cfg, workdir=args.out / f"s{seed}/bim_pretrain")
        last = pre["checkpoints"]["last"]
        ft_cfg = _config("bim_finetune.yaml", [*ft_o, f"seed={seed}", f"train.init_from={last}"])
        ft = train(ft_cfg, workdir=args.out / f"s{seed}/bim_finetune")
        base_cfg = _config("baseline.yaml", [*ft_o, f"seed={seed}"])
        base = train(base_cfg, workdir=args.out / f"s{seed}/baseline")
        cls = args.target.upper()
        row = {
            "seed": seed,
            "baseline": base["metrics"]["test/dsc"],
            "bim+ft": ft["metrics"]["test/dsc"],
            "baseline_best_epoch": base["best_epoch"],
            "bim_best_epoch": ft["best_epoch"],
            "baseline_hd95": base["metrics"].get(f"test/hd95/{cls}"),
            "bim_hd95": ft["metrics"].get(f"test/hd95/{cls}"),
            "pretrain_final": pre["history"][-1],
            "pictures": pre["pictures"],
        }
        rows.append(row)
        print(
            f"seed {seed}: baseline {row['baseline']:.4f}  bim+finetune {row['bim+ft']:.4f}  "
            f"({time.perf_counter() - t0:.0f} s so far)",
            flush=True,
        )
    summary = {}
    for key in ("baseline", "bim+ft"):
        vals = [r[key] for r in rows]
        summary[key] = {
            "mean": statistics.mean(vals),
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "n": len(vals),
        }
    print(
        f"\n3D test Dice ({args.target.upper()}, 1 labeled scan, best-val epoch), "
        f"mean +- sample std over {len(rows)} seeds:"
    )
    print("| method | " + " | ".join(f"seed {r['seed']}" for r in rows) + " | mean +- std |")
    print("|---" * (len(rows) + 2) + "|")
    for key, label in (("baseline", "Baseline"), ("bim+ft", "BIM pre-train + fine-tune")):
        s = summary[key]
        print(
            f"| {label} | "
            + " | ".join(f"{100 * r[key]:.2f}" for r in rows)
            + f" | {100 * s['mean']:.2f} +- {100 * s['std']:.2f} |"
        )
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    (args.out / "summary.json").write_text(
        json.dumps(
            {"args": vars(args) | {"out": str(args.out)}, "rows": rows, "summary": summary},
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
