"""``train(cfg, report, workdir=..., resume=...)``: one run, end to end.

Stages (``cfg.stage``) and what the method declares decide the data drawn each step:

* ``pretrain``: unlabeled batches only (``uses_unlabeled`` and not ``uses_labeled``). There is no
  validation Dice (the segmentation layer is not trained yet): the best checkpoint is the last one,
  and no test metrics are computed; clustering methods draw their pictures at the end.
* ``finetune``: labeled batches only; ``train.init_from`` is loaded first when given (required by
  methods with ``init == "required"``).
* ``semi``: a labeled and an unlabeled batch every step.

Each epoch is ``train.iters_per_epoch`` iterations; the LR is stepped per epoch (warm-up then
cosine). After every epoch: 3D validation Dice (supervised stages), ``checkpoints/last.pt`` (model,
heads, optimiser, scheduler, scaler, every RNG state, epoch, best score, history), ``best.pt`` on
improvement, then ``report(metrics, step=epoch)``. At the end the best weights are tested and the
result is written to ``result.json``; the last ``report`` call carries those final metrics.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from segssl.config import RunConfig, canonical_json, config_hash
from segssl.data.types import Batch, DataBundle
from segssl.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from segssl.engine.evaluate import evaluate, pad_to_multiple
from segssl.engine.progress import EpochProgress
from segssl.engine.runtime import (
    EngineConfigError,
    Runtime,
    capture_rng,
    resolve_runtime,
    restore_rng,
    seed_everything,
)
from segssl.engine.schedule import build_optimizer, build_scheduler
from segssl.methods import get_method
from segssl.methods.base import Method, MethodContext
from segssl.models import build_model

__all__ = ["NonFiniteLossError", "Report", "train"]

Report = Callable[[dict[str, float], int], None]
_STAGE_NEEDS = {"pretrain": (False, True), "finetune": (True, False), "semi": (True, True)}
_GENERATORS = ("augment", "method")


class NonFiniteLossError(RuntimeError):
    """A loss (or one of its parts) became NaN or Inf; the message names the step and the parts."""


# ----------------------------------------------------------------------------- checks
def check_run(cfg: RunConfig) -> type[Method]:
    """Validate what the config alone can tell before any work; return the method class.

    Raises:
        EngineConfigError: stage and method disagree, or ``train.init_from`` is missing /
            forbidden for the method.
        CheckpointError: ``train.init_from`` is not a readable segssl checkpoint.
    """
    method_cls = get_method(cfg.method.name)
    need = (method_cls.uses_labeled, method_cls.uses_unlabeled)
    if _STAGE_NEEDS[cfg.stage] != need:
        fits = [s for s, n in _STAGE_NEEDS.items() if n == need]
        raise EngineConfigError(
            f"stage={cfg.stage!r} does not fit method {cfg.method.name!r} (labeled batches: "
            f"{need[0]}, unlabeled batches: {need[1]}); expected stage {fits[0]!r}"
        )
    init = cfg.train.init_from
    if method_cls.init == "required" and not init:
        raise EngineConfigError(
            f"method {cfg.method.name!r} starts from a pre-trained checkpoint: set train.init_from"
        )
    if method_cls.init == "forbidden" and init:
        raise EngineConfigError(
            f"method {cfg.method.name!r} trains from random weights; train.init_from={init!r} "
            "is not allowed (use method 'finetune')"
        )
    if init:
        load_checkpoint(init)  # fails early and clearly on a bad file
    return method_cls


def _seed_for(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# ----------------------------------------------------------------------------- batches
class _Batches:
    """Draws the batches a method needs, base-augments them and moves them to the device."""

    def __init__(self, data: DataBundle, cfg: RunConfig, runtime: Runtime, gen: torch.Generator):
        from segssl.augment import BaseAugment

        self.data, self.runtime, self.gen = data, runtime, gen
        self.augment = BaseAugment(cfg.augment)

    def _prepare(self, batch: Batch) -> Batch:
        out = {
            k: v.to(self.runtime.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }
        out["image"], label = self.augment(out["image"], out.get("label"), generator=self.gen)
        if label is not None:
            out["label"] = label
        if self.runtime.channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    @staticmethod
    def _next(it: Iterator[Batch] | None, what: str) -> Batch:
        if it is None:
            raise EngineConfigError(f"the data layer returned no {what} batches for this stage")
        return next(it)

    def draw(self, labeled: bool, unlabeled: bool) -> tuple[Batch | None, Batch | None]:
        """One step's (labeled, unlabeled) batches; None for a kind the method does not use."""
        lab = self._prepare(self._next(self.data.labeled, "labeled")) if labeled else None
        unl = self._prepare(self._next(self.data.unlabeled, "unlabeled")) if unlabeled else None
        return lab, unl

    def skip(self, n: int, labeled: bool, unlabeled: bool) -> None:
        """Consume ``n`` raw batches (resume: the data streams continue where they stopped)."""
        for _ in range(n):
            if labeled:
                self._next(self.data.labeled, "labeled")
            if unlabeled:
                self._next(self.data.unlabeled, "unlabeled")


# ----------------------------------------------------------------------------- helpers
def _peak_mem_mb(runtime: Runtime) -> float:
    if runtime.cuda:
        return torch.cuda.max_memory_allocated(runtime.device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _check_finite(out: dict[str, torch.Tensor], epoch: int, it: int, step: int) -> dict:
    if "loss" not in out:
        raise KeyError(f"training_step must return a dict with 'loss', got keys {sorted(out)}")
    values = dict(
        zip(out, torch.stack([v.detach().float() for v in out.values()]).tolist(), strict=True)
    )
    if not all(math.isfinite(v) for v in values.values()):
        parts = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at epoch {epoch + 1}, iteration {it + 1} (global step {step}): "
            f"{parts}; stopping the run"
        )
    return values


def _picture_batch(data: DataBundle, count: int, multiple: int) -> Batch | None:
    """Middle slices of the first validation volumes (count slices in all)."""
    vols = data.val or data.test
    if not vols or count <= 0:
        return None
    images, labels = [], []
    for i in range(count):
        vol = vols[i % len(vols)]
        d = vol.image.shape[0]
        z = d // 2 + (i // len(vols)) * max(d // 4, 1) * (-1) ** i
        z = min(max(z, 0), d - 1)
        images.append(torch.from_numpy(np.asarray(vol.image[z], dtype=np.float32)))
        labels.append(torch.from_numpy(np.asarray(vol.label[z], dtype=np.int64)))
    image, _ = pad_to_multiple(torch.stack(images)[:, None], multiple)
    label, _ = pad_to_multiple(torch.stack(labels)[:, None], multiple)
    return {"image": image, "label": label[:, 0]}


def _save_pictures(method: Method, batch: Batch | None, runtime: Runtime, out: Path) -> list[str]:
    if batch is None:
        return []
    batch = {k: v.to(runtime.device) for k, v in batch.items()}
    method.eval()
    figures = method.pictures(batch)
    if not figures:
        return []
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        paths.append(str(path))
    return paths


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    tmp.replace(path)


# ----------------------------------------------------------------------------- train
def train(
    cfg: RunConfig,
    report: Report | None = None,
    *,
    workdir: str | Path,
    resume: bool = True,
) -> dict:
    """Run one training run described by ``cfg`` in ``workdir``.

    Args:
        cfg: the validated run config.
        report: called as ``report(metrics, step)`` after every epoch (``train/<part>`` means,
            ``train/lr``, ``val/dsc`` and ``val/dsc/<class>`` in supervised stages; step = epoch
            number from 1) and once at the end with the final metrics (step = ``epochs``).
            An exception raised by ``report`` stops the run; ``last.pt`` of that epoch is saved.
        workdir: run directory: ``config.yaml``, ``checkpoints/{last,best}.pt``, ``result.json``,
            ``pictures/``.
        resume: continue from ``checkpoints/last.pt`` when it exists (same config required).

    Returns:
        The result dict written to ``workdir/result.json``: ``metrics`` (``best_epoch``,
        ``test/dsc``, ``test/dsc/<class>``, ``test/hd95/<class>``, ``test/asd/<class>``,
        ``cost/wall_s``, ``cost/gpu_s``, ``cost/peak_mem_mb``), ``history`` (per-epoch metrics),
        checkpoint paths, pictures, data and split fingerprints, config hash.

    Raises:
        EngineConfigError, CheckpointError, NonFiniteLossError, UnknownMethodError.
    """
    t_start = time.perf_counter()
    workdir = Path(workdir)
    method_cls = check_run(cfg)
    runtime = resolve_runtime(cfg.train)
    last_path, best_path = workdir / "checkpoints" / "last.pt", workdir / "checkpoints" / "best.pt"
    cfg_json = canonical_json(
        cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": True})})
    )
    state = None
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        if state.get("config") != cfg_json:
            raise CheckpointError(
                f"{last_path}: written by a different config; use another workdir or "
                "resume=False to start over"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    )

    from segssl.data import build_data

    seed_everything(cfg.seed, runtime, cfg.train.deterministic)
    gens = {
        n: torch.Generator().manual_seed(_seed_for(cfg.seed, i))
        for i, n in enumerate(_GENERATORS, start=1)
    }
    data = build_data(
        cfg.data,
        seed=cfg.seed,
        labeled=method_cls.uses_labeled,
        unlabeled=method_cls.uses_unlabeled,
        workdir=workdir,
    )
    progress = EpochProgress(
        cfg.train.progress,
        cfg.train.epochs,
        cfg.train.iters_per_epoch,
        f"{cfg.method.name}/{cfg.stage}",
    )
    try:
        return _run(
            cfg,
            report,
            workdir,
            method_cls,
            runtime,
            data,
            gens,
            state,
            progress,
            cfg_json,
            t_start,
            last_path,
            best_path,
        )
    finally:
        progress.close()
        data.close()


def _run(
    cfg,
    report,
    workdir,
    method_cls,
    runtime,
    data,
    gens,
    state,
    progress,
    cfg_json,
    t_start,
    last_path,
    best_path,
) -> dict:  # noqa: ANN001 - internal, see train()
    model = build_model(cfg.model, data.num_classes)
    init_report = None
    if cfg.train.init_from and state is None:
        init_report = load_model_weights(
            model,
            cfg.train.init_from,
            strict=cfg.train.init_strict,
            only=cfg.train.init_only,
            exclude=cfg.train.init_exclude,
        )
    ctx = MethodContext(
        num_classes=data.num_classes,
        class_names=tuple(data.class_names),
        device=runtime.device,
        augment=cfg.augment,
        partitions=cfg.data.partitions,
        generator=gens["method"],
    )
    method = method_cls(model, cfg.method, ctx).to(runtime.device)
    if runtime.channels_last:
        method.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg.optim, method.parameters())
    scheduler = build_scheduler(cfg.optim, optimizer, cfg.train.epochs)
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=runtime.amp)
    batches = _Batches(data, cfg, runtime, gens["augment"])
    supervised = method_cls.uses_labeled
    multiple = 2 ** (cfg.model.depth - 1)
    E, iters = cfg.train.epochs, cfg.train.iters_per_epoch
    trainable = [p for p in method.parameters() if p.requires_grad]

    start, history, best = 0, [], {"epoch": 0, "score": -math.inf}
    if state is not None:
        model.load_state_dict(state["model"])
        method.heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start, history, best = state["epoch"], state["history"], state["best"]
        batches.skip(start * iters, method_cls.uses_labeled, method_cls.uses_unlabeled)
        restore_rng(state["rng"], gens)
        progress.message(f"resumed from {last_path} after epoch {start}")

    def weights() -> dict:
        return {"model": model.state_dict(), "heads": method.heads.state_dict()}

    for epoch in range(start, E):
        method.train()
        progress.start_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        sums: dict[str, float] = {}
        for it in range(iters):
            step = epoch * iters + it + 1
            lab, unl = batches.draw(method_cls.uses_labeled, method_cls.uses_unlabeled)
            with torch.autocast(runtime.device.type, enabled=runtime.amp):
                out = method.training_step(lab, unl)
            values = _check_finite(out, epoch, it, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(out["loss"]).backward()
            if cfg.optim.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            method.after_step(step)
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            progress.advance({k: v / (it + 1) for k, v in sums.items()})
        scheduler.step()
        metrics = {f"train/{k}": v / iters for k, v in sums.items()}
        metrics["train/lr"] = lr
        if supervised and data.val and ((epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == E):
            method.eval()
            metrics.update(
                evaluate(
                    method.predict,
                    data.val,
                    data.class_names,
                    runtime,
                    cfg.train.eval_batch_size,
                    multiple,
                    False,
                    "val",
                )
            )
            if metrics["val/dsc"] > best["score"]:
                best = {"epoch": epoch + 1, "score": metrics["val/dsc"]}
                if cfg.train.save_best:
                    save_checkpoint(
                        best_path,
                        {
                            **weights(),
                            "epoch": epoch + 1,
                            "config": cfg_json,
                            "config_hash": config_hash(cfg),
                            "kind": "best",
                        },
                    )
        elif not supervised:
            best = {"epoch": epoch + 1, "score": -math.inf}
        metrics["time/epoch_s"] = progress.end_epoch(epoch, metrics)
        history.append({"epoch": epoch + 1, **metrics})
        save_checkpoint(
            last_path,
            {
                **weights(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": capture_rng(gens),
                "epoch": epoch + 1,
                "best": best,
                "history": history,
                "config": cfg_json,
                "config_hash": config_hash(cfg),
                "kind": "last",
            },
        )
        if report is not None:
            report({k: v for k, v in metrics.items() if k != "time/epoch_s"}, epoch + 1)

    # ------------------------------------------------------------------ final evaluation
    if supervised and best_path.exists() and cfg.train.save_best:
        ckpt = load_checkpoint(best_path)
        model.load_state_dict(ckpt["model"])
        method.heads.load_state_dict(ckpt["heads"])
    elif not supervised or not best_path.exists():
        save_checkpoint(
            best_path,
            {
                **weights(),
                "epoch": E,
                "config": cfg_json,
                "config_hash": config_hash(cfg),
                "kind": "best",
            },
        )
        best = {"epoch": E, "score": best["score"]} if not supervised else best
    final: dict[str, float] = {"best_epoch": float(best["epoch"] or E)}
    method.eval()
    if supervised and data.test:
        final.update(
            evaluate(
                method.predict,
                data.test,
                data.class_names,
                runtime,
                cfg.train.eval_batch_size,
                multiple,
                True,
                "test",
            )
        )
    pictures = _save_pictures(
        method, _picture_batch(data, cfg.train.pictures, multiple), runtime, workdir / "pictures"
    )
    wall = time.perf_counter() - t_start
    if history and state is not None:
        wall += sum(h.get("time/epoch_s", 0.0) for h in history[: state["epoch"]])
    final["cost/wall_s"] = wall
    final["cost/gpu_s"] = wall if runtime.cuda else 0.0
    final["cost/peak_mem_mb"] = _peak_mem_mb(runtime)
    result = {
        "format": "segssl-result",
        "metrics": final,
        "history": history,
        "best_epoch": int(final["best_epoch"]),
        "stage": cfg.stage,
        "method": cfg.method.name,
        "config_hash": config_hash(cfg),
        "checkpoints": {"last": str(last_path), "best": str(best_path)},
        "pictures": pictures,
        "init": init_report,
        "data_fingerprint": data.data_fingerprint,
        "split_fingerprint": data.split_fingerprint,
        "split_path": str(data.split_path) if data.split_path else None,
        "runtime": {
            "device": str(runtime.device),
            "amp": runtime.amp,
            "channels_last": runtime.channels_last,
        },
    }
    _write_json(workdir / "result.json", result)
    if report is not None:
        report(final, E)
    return result
