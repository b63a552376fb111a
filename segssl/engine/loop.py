"""``train(cfg, report, workdir=..., resume=...)``: one run, end to end.

Stages (``cfg.stage``) and what the method declares decide the data drawn each step:

* ``pretrain``: unlabeled batches only (``uses_unlabeled`` and not ``uses_labeled``). There is no
  validation Dice (the segmentation layer is not trained yet): the best checkpoint is the last one,
  and no test metrics are computed; clustering methods draw their pictures at the end.
* ``finetune``: labeled batches only; ``train.init_from`` is loaded first when given (required by
  methods with ``init == "required"``).
* ``semi``: a labeled and an unlabeled batch every step.

Each epoch is ``train.iters_per_epoch`` iterations; the LR is stepped per epoch (warm-up then
cosine). Every step: ``method.training_step(labeled, unlabeled, clock)``, backward and the main
optimiser's step (GradScaler, clipping), ``method.after_step(clock)`` (EMA updates; owned
optimisers step through ``method.optimizer_step``), one ``scaler.update()``. After every epoch:
3D validation Dice (supervised stages) of ``method.predict``, ``checkpoints/last.pt`` (the whole
method state, every optimiser and scheduler, scaler, every RNG state, epoch, best score,
history), ``best.pt`` on improvement (the ``predict_with`` and ``carry`` networks), then
``report(metrics, step=epoch)``. At the end the best ``predict_with`` weights are restored and
tested; the result is written to ``result.json``; the last ``report`` call carries those final
metrics.
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

from segssl.config import OptimizerSettings, RunConfig, canonical_json, config_hash
from segssl.data.types import Batch, DataBundle
from segssl.engine.amp import SCALERS, set_capturable
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
from segssl.engine.schedule import build_optimizer, build_scheduler, param_groups
from segssl.methods import get_method
from segssl.methods.base import Clock, Method, MethodContext
from segssl.models import build_model

__all__ = ["NonFiniteLossError", "Report", "profile_step", "train"]

Report = Callable[[dict[str, float], int], None]
_STAGE_NEEDS = {"pretrain": (False, True), "finetune": (True, False), "semi": (True, True)}
_GENERATORS = ("augment", "method")
MAIN = "main"  # the engine's optimiser; a method's own optimisers go by their declared names


class NonFiniteLossError(RuntimeError):
    """A loss (or one of its parts) became NaN or Inf; the message names the step and the parts."""


# ----------------------------------------------------------------------------- checks
def check_run(cfg: RunConfig) -> type[Method]:
    """Validate what the config alone can tell before any work; return the method class.

    Raises:
        EngineConfigError: stage and method disagree, ``train.init_from`` is missing /
            forbidden for the method, or a ``model.freeze`` prefix matches no parameter.
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
    try:  # the method as declared, built on the meta device: no memory, no data, no files
        with torch.device("meta"):
            model = build_model(cfg.model, 2)
            method = build_method(cfg, method_cls, model, 2, ("fg",), torch.device("meta"))
        method.validate()
        optimizer_params(cfg, method)
    except (ValueError, KeyError, AttributeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise EngineConfigError(f"method {cfg.method.name!r}: {msg}") from None
    return method_cls


def build_method(
    cfg: RunConfig,
    method_cls: type[Method],
    model: torch.nn.Module,
    num_classes: int,
    class_names: tuple[str, ...],
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Method:
    """The method of ``cfg`` around ``model``, with its context (run length included)."""
    ctx = MethodContext(
        num_classes=num_classes,
        class_names=class_names,
        device=device,
        augment=cfg.augment,
        partitions=cfg.data.partitions,
        generator=generator if generator is not None else torch.Generator(),
        epochs=cfg.train.epochs,
        iters_per_epoch=cfg.train.iters_per_epoch,
        image_size=tuple(cfg.data.preprocess.size),
    )
    return method_cls(model, cfg.method, ctx)


def optimizer_params(cfg: RunConfig, method: Method) -> dict[str, tuple[OptimizerSettings, list]]:
    """``{optimiser name: (settings, trainable named parameters)}``: ``main`` gets everything a
    method does not step itself (``Method.optimizers``); every group prefix is checked.

    Raises:
        ValueError: ``optim.extra`` names an optimiser the method does not own, a parameter is
            under the prefixes of two owned optimisers, a group prefix matches no parameter, or
            an optimiser has nothing to train.
    """
    owned = method.optimizers
    unknown = sorted(set(cfg.optim.extra) - set(owned))
    if unknown or MAIN in owned:
        raise ValueError(
            f"optim.extra: {unknown or [MAIN]} are not optimisers the method owns "
            f"(it owns {sorted(owned) or 'none'})"
        )
    named: dict[str, list] = {MAIN: [], **{k: [] for k in owned}}
    for name, p in method.named_parameters():
        if p.requires_grad:
            hit = [o for o, pre in owned.items() if any(_under(name, q) for q in pre)]
            if len(hit) > 1:
                raise ValueError(
                    f"parameter {name!r} is under the prefixes of several owned optimisers "
                    f"{hit}; each parameter belongs to one optimiser"
                )
            named[hit[0] if hit else MAIN].append((name, p))
    for key, prefixes in owned.items():
        if not named[key]:
            raise ValueError(
                f"owned optimiser {key!r}: its prefixes {list(prefixes)} hold no trainable "
                "parameter (frozen, or a teacher)"
            )
    plain = cfg.optim.model_copy(update={"groups": {}})
    out = {}
    for key, params in named.items():
        settings = cfg.optim if key == MAIN else cfg.optim.extra.get(key, plain)
        param_groups(settings, params, "optim" if key == MAIN else f"optim.extra.{key}")
        out[key] = (settings, params)
    return out


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


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


def _step_values(out: dict[str, torch.Tensor]) -> tuple[tuple[str, ...], torch.Tensor]:
    """The step's logged values as ONE detached float32 device tensor (no host read here)."""
    if "loss" not in out:
        raise KeyError(f"training_step must return a dict with 'loss', got keys {sorted(out)}")
    return tuple(out), torch.stack([v.detach().float() for v in out.values()])


def _epoch_values(
    steps: list[tuple[tuple[str, ...], torch.Tensor]], epoch: int, first_step: int
) -> dict[str, float]:
    """Read an epoch's step values from the device ONCE; their means per name.

    Raises:
        NonFiniteLossError: naming the first step whose loss or a part is NaN or Inf.
    """
    flat = torch.cat([v for _, v in steps]).tolist() if steps else []
    sums: dict[str, float] = {}
    at = 0
    for it, (keys, _) in enumerate(steps):
        values = dict(zip(keys, flat[at : at + len(keys)], strict=True))
        at += len(keys)
        if not all(math.isfinite(v) for v in values.values()):
            parts = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, iteration {it + 1} (global step "
                f"{first_step + it}): {parts}; stopping the run"
            )
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / len(steps) for k, v in sums.items()}


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


def best_val_metrics(history: list[dict], best_epoch: int) -> dict[str, float]:
    """``best_val/<metric>``: the ``val/*`` metrics of the best validation epoch (the papers that
    report validation Dice, GMI, report these); empty when no epoch was validated."""
    for entry in history:
        if entry.get("epoch") == best_epoch:
            return {f"best_{k}": v for k, v in entry.items() if k.startswith("val/")}
    return {}


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
        workdir: run directory: ``config.yaml``, ``split.json``, ``checkpoints/{last,best}.pt``,
            ``result.json``, ``pictures/``.
        resume: continue from ``checkpoints/last.pt`` when it exists (same config required; a
            finished run is not retrained, only evaluated again).

    Returns:
        The result dict written to ``workdir/result.json``: ``metrics`` (``best_epoch``,
        ``test/dsc``, ``test/dsc/<class>``, ``test/hd95/<class>``, ``test/asd/<class>``,
        ``best_val/dsc``, ``best_val/dsc/<class>`` (the best validation epoch's), ``cost/wall_s``,
        ``cost/gpu_s``, ``cost/peak_mem_mb``), ``history`` (per-epoch metrics),
        checkpoint paths, pictures, data and split fingerprints, config hash.

    Raises:
        EngineConfigError, CheckpointError, NonFiniteLossError, UnknownMethodError, DataError.
    """
    run = _Run(cfg, Path(workdir), report)
    state = run.read_resume_state() if resume else None
    run.prepare()
    try:
        run.build(state)
        for epoch in range(run.start_epoch, cfg.train.epochs):
            run.epoch(epoch)
        return run.finish()
    finally:
        run.close()


def profile_step(
    cfg: RunConfig,
    *,
    workdir: str | Path,
    warmup: int = 1,
    checkpoint: str | Path | None = None,
) -> dict[str, float]:
    """FLOPs and CPU seconds of one training step of ``cfg``, as :func:`train` runs it.

    Sets the run up as :func:`train` does (data, model, ``train.init_from``, method, optimisers),
    takes ``warmup`` steps uncounted (one-off work of a first step: a teacher's copy, lazily
    built buffers), then one step under ``torch.utils.flop_counter.FlopCounterMode``: drawing
    and augmenting the batches, ``training_step``, backward, the optimiser steps and
    ``after_step``. No validation, test, history or ``last.pt`` (the cost of a dry run's
    calibration).

    Args:
        cfg: the validated run config (its ``epochs`` x ``iters_per_epoch`` must allow
            ``warmup + 1`` steps within the first epoch).
        workdir: run directory (``config.yaml``, ``split.json``).
        warmup: uncounted steps before the counted one.
        checkpoint: where to write the carried weights after the counted step (a later stage's
            ``train.init_from``); None writes nothing.

    Returns:
        ``{"flops": ..., "cpu_s": ...}``: FLOPs of the counted step (forward and backward of
        every matmul and convolution torch's counter knows) and its process CPU seconds (the
        counter's own overhead included).
    """
    from torch.utils.flop_counter import FlopCounterMode

    if warmup + 1 > cfg.train.iters_per_epoch:
        raise ValueError(
            f"profile_step: train.iters_per_epoch={cfg.train.iters_per_epoch} < warmup + 1 "
            f"= {warmup + 1} steps"
        )
    run = _Run(cfg, Path(workdir), None)
    run.prepare()
    try:
        run.build(None)
        run.method.train()
        for it in range(warmup):
            run._step(0, it)
        counter = FlopCounterMode(display=False)
        t0 = time.process_time()
        with counter:
            run._step(0, warmup)
        cpu_s = time.process_time() - t0
        if checkpoint is not None:
            save_checkpoint(checkpoint, {**run._weights(), "epoch": 0})
        return {"flops": float(counter.get_total_flops()), "cpu_s": cpu_s}
    finally:
        run.close()


class _Run:
    """The state of one run; :func:`train` drives it."""

    def __init__(self, cfg: RunConfig, workdir: Path, report: Report | None) -> None:
        self.t_start = time.perf_counter()
        self.cfg, self.workdir, self.report = cfg, workdir, report
        self.method_cls = check_run(cfg)
        self.runtime = resolve_runtime(cfg.train)
        self.last_path = workdir / "checkpoints" / "last.pt"
        self.best_path = workdir / "checkpoints" / "best.pt"
        # progress display does not change results: a run may resume with it switched
        quiet = cfg.train.model_copy(update={"progress": True})
        self.cfg_json = canonical_json(cfg.model_copy(update={"train": quiet}))
        self.cfg_hash = config_hash(cfg)
        self.supervised = self.method_cls.uses_labeled
        self.multiple = cfg.model.input_multiple
        self.data: DataBundle | None = None
        self.progress = EpochProgress(
            cfg.train.progress,
            cfg.train.epochs,
            cfg.train.iters_per_epoch,
            f"{cfg.method.name}/{cfg.stage}",
        )
        self.start_epoch, self.resumed_from = 0, 0
        self.history: list[dict] = []
        self.best: dict = {"epoch": 0, "score": -math.inf}
        self.init_report: dict | None = None

    # ------------------------------------------------------------------ set-up
    def read_resume_state(self) -> dict | None:
        """``last.pt`` of this workdir, checked to come from the same config, or None."""
        if not self.last_path.exists():
            return None
        state = load_checkpoint(self.last_path, resume=True)
        if state.get("config") != self.cfg_json:
            raise CheckpointError(
                f"{self.last_path}: written by a different config; use another workdir or "
                "resume=False to start over"
            )
        return state

    def prepare(self) -> None:
        """Write the resolved config, seed everything, build the data streams."""
        from segssl.data import build_data

        cfg = self.cfg
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.yaml").write_text(
            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        seed_everything(cfg.seed, self.runtime, cfg.train.deterministic)
        self.gens = {
            n: torch.Generator().manual_seed(_seed_for(cfg.seed, i))
            for i, n in enumerate(_GENERATORS, start=1)
        }
        self.data = build_data(
            cfg.data,
            seed=cfg.seed,
            labeled=self.method_cls.uses_labeled,
            unlabeled=self.method_cls.uses_unlabeled,
            workdir=self.workdir,
        )

    def build(self, state: dict | None) -> None:
        """Model (initialised or resumed), method, optimiser, schedule, scaler, batches."""
        cfg, data, rt = self.cfg, self.data, self.runtime
        self.model = build_model(cfg.model, data.num_classes)
        if cfg.train.init_from and state is None:
            self.init_report = load_model_weights(
                self.model,
                cfg.train.init_from,
                strict=cfg.train.init_strict,
                only=cfg.train.init_only,
                exclude=cfg.train.init_exclude,
            )
        self.method = build_method(
            cfg,
            self.method_cls,
            self.model,
            data.num_classes,
            tuple(data.class_names),
            rt.device,
            self.gens["method"],
        ).to(rt.device)
        self.method.validate()
        if rt.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.settings, self.params, self.optimizers, self.schedulers = {}, {}, {}, {}
        self._capturable = rt.capturable
        for key, (settings, named) in optimizer_params(cfg, self.method).items():
            self.settings[key], self.params[key] = settings, [p for _, p in named]
            self.optimizers[key] = build_optimizer(settings, named, capturable=self._capturable)
            self.schedulers[key] = build_scheduler(settings, self.optimizers[key], cfg.train.epochs)
        self.optimizer, self.trainable = self.optimizers[MAIN], self.params[MAIN]
        self.scaler = SCALERS[rt.grad_scaler](rt.device.type, enabled=rt.scaled)
        self.method._stepper = self._own_step
        self.batches = _Batches(data, cfg, rt, self.gens["augment"])
        if state is not None:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        self.method.load_state_dict(state["method"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
            set_capturable(opt, self._capturable)  # the file's flag is another device's
            self.schedulers[key].load_state_dict(state["schedulers"][key])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = self.resumed_from = state["epoch"]
        self.history, self.best = state["history"], state["best"]
        if self.start_epoch < self.cfg.train.epochs:  # a finished run draws no more batches
            self.batches.skip(
                self.start_epoch * self.cfg.train.iters_per_epoch,
                self.method_cls.uses_labeled,
                self.method_cls.uses_unlabeled,
            )
        restore_rng(state["rng"], self.gens)
        self.progress.message(f"resumed from {self.last_path} after epoch {self.start_epoch}")

    # ------------------------------------------------------------------ epochs
    def _step(self, epoch: int, it: int) -> tuple[tuple[str, ...], torch.Tensor]:
        """One optimisation step; returns the logged values on the device (read once per
        epoch by :func:`_epoch_values`: nothing in a step waits for the device)."""
        cfg, rt = self.cfg, self.runtime
        ipe = cfg.train.iters_per_epoch
        clock = Clock(epoch * ipe + it + 1, epoch, ipe, cfg.train.epochs * ipe)
        self._stepped: tuple[int, set[str]] = (clock.step, set())
        lab, unl = self.batches.draw(self.method_cls.uses_labeled, self.method_cls.uses_unlabeled)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp):
            out = self.method.training_step(lab, unl, clock)
        self._own_step(MAIN, out["loss"])
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype, enabled=rt.amp):
            extra = self.method.after_step(clock)
        self.scaler.update()
        return _step_values({**out, **extra} if extra else out)

    def _own_step(self, key: str, loss: torch.Tensor) -> None:
        """Backward ``loss`` and step optimiser ``key`` (GradScaler, clipping).

        Raises:
            RuntimeError: ``key`` was already stepped in this training step (GradScaler allows
                one step per optimiser between updates; refused on every device alike).
        """
        step, done = self._stepped
        if key in done:
            raise RuntimeError(
                f"optimiser {key!r} was stepped twice in step {step}: each optimiser steps at most "
                "once per training step (AMP's GradScaler updates its scale once per step); "
                "take several updates over consecutive steps instead"
            )
        done.add(key)
        opt, clip = self.optimizers[key], self.settings[key].grad_clip
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip is not None:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(self.params[key], clip)
        self.scaler.step(opt)

    def _weights(self) -> dict:
        """The carried weights (``model``: what a later stage receives) and the predict net."""
        return {
            "model": self.method.carried_state(),
            "predict": self.method.network(self.method.predict_with)[0].state_dict(),
            "carry": self.method.carry,
            "predict_with": self.method.predict_with,
            "config": self.cfg_json,
            "config_hash": self.cfg_hash,
        }

    def _validate(self, epoch: int) -> dict[str, float]:
        cfg, data = self.cfg, self.data
        due = (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs
        if not (self.supervised and data.val and due):
            return {}
        self.method.eval()
        metrics = evaluate(
            self.method.predict,
            data.val,
            data.class_names,
            self.runtime,
            cfg.train.eval_batch_size,
            self.multiple,
            False,
            "val",
        )
        if metrics["val/dsc"] > self.best["score"]:
            self.best = {"epoch": epoch + 1, "score": metrics["val/dsc"]}
            if cfg.train.save_best:
                save_checkpoint(self.best_path, {**self._weights(), "epoch": epoch + 1})
        return metrics

    def epoch(self, epoch: int) -> None:
        """Train one epoch, validate, checkpoint, report."""
        iters = self.cfg.train.iters_per_epoch
        self.method.train()
        self.progress.start_epoch(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        steps = []
        for it in range(iters):
            steps.append(self._step(epoch, it))
            self.progress.advance()
        # the epoch's one host read of the loss values (a NaN stops the run here, before this
        # epoch's checkpoint is written)
        means = _epoch_values(steps, epoch, epoch * iters + 1)
        for scheduler in self.schedulers.values():
            scheduler.step()
        metrics = {f"train/{k}": v for k, v in means.items()}
        metrics["train/lr"] = lr
        metrics.update(self._validate(epoch))
        took = self.progress.end_epoch(epoch, metrics)
        self.history.append({"epoch": epoch + 1, **metrics, "time/epoch_s": took})
        save_checkpoint(
            self.last_path,
            {
                "model": self.method.carried_state(),
                "carry": self.method.carry,
                "config": self.cfg_json,
                "config_hash": self.cfg_hash,
                "method": self.method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "scaler": self.scaler.state_dict(),
                "rng": capture_rng(self.gens),
                "epoch": epoch + 1,
                "best": self.best,
                "history": self.history,
            },
        )
        if self.report is not None:
            self.report(metrics, epoch + 1)

    # ------------------------------------------------------------------ end
    def _select_final_weights(self) -> int:
        """Restore the best validation weights of the ``predict_with`` network (supervised,
        ``save_best``, a best epoch selected by this run, resumed history included); else the
        last epoch's weights are the result and become ``best.pt`` (a ``best.pt`` left by an
        earlier run in this workdir is never restored). Returns the epoch tested."""
        epochs = self.cfg.train.epochs
        selected = self.best["epoch"] > 0 and self.best_path.exists()
        if self.supervised and self.cfg.train.save_best and selected:
            ckpt = load_checkpoint(self.best_path, resume=True)
            self.method.network(self.method.predict_with)[0].load_state_dict(ckpt["predict"])
            return int(ckpt["epoch"])
        save_checkpoint(self.best_path, {**self._weights(), "epoch": epochs})
        return epochs

    def finish(self) -> dict:
        """Test the selected weights, draw pictures, write and return the result."""
        cfg, data, rt = self.cfg, self.data, self.runtime
        final: dict[str, float] = {"best_epoch": float(self._select_final_weights())}
        if self.supervised:
            final.update(best_val_metrics(self.history, int(self.best["epoch"])))
        self.method.eval()
        if self.supervised and data.test:
            final.update(
                evaluate(
                    self.method.predict,
                    data.test,
                    data.class_names,
                    rt,
                    cfg.train.eval_batch_size,
                    self.multiple,
                    True,
                    "test",
                    cfg.metrics,
                )
            )
        pictures = _save_pictures(
            self.method,
            _picture_batch(data, cfg.train.pictures, self.multiple),
            rt,
            self.workdir / "pictures",
        )
        wall = time.perf_counter() - self.t_start
        wall += sum(h.get("time/epoch_s", 0.0) for h in self.history[: self.resumed_from])
        final["cost/wall_s"] = wall
        final["cost/gpu_s"] = wall if rt.cuda else 0.0
        final["cost/peak_mem_mb"] = _peak_mem_mb(rt)
        result = {
            "format": "segssl-result",
            "metrics": final,
            "history": self.history,
            "best_epoch": int(final["best_epoch"]),
            "stage": cfg.stage,
            "method": cfg.method.name,
            "config_hash": self.cfg_hash,
            "checkpoints": {"last": str(self.last_path), "best": str(self.best_path)},
            "pictures": pictures,
            "init": self.init_report,
            "data_fingerprint": data.data_fingerprint,
            "split_fingerprint": data.split_fingerprint,
            "split_path": str(data.split_path) if data.split_path else None,
            "runtime": {
                "device": str(rt.device),
                "amp": rt.amp,
                "amp_dtype": str(rt.amp_dtype).removeprefix("torch.") if rt.amp else None,
                "grad_scaler": rt.grad_scaler if rt.scaled else None,
                "channels_last": rt.channels_last,
            },
        }
        _write_json(self.workdir / "result.json", result)
        if self.report is not None:
            self.report(final, cfg.train.epochs)
        return result

    def close(self) -> None:
        """Stop the progress display and the data loaders."""
        self.progress.close()
        if self.data is not None:
            self.data.close()
