"""Planner: a sweep spec becomes trials with content-addressed keys.

A trial's key is ``config_hash`` of its fully resolved run config (with the seed) and of its
parent's key, so the same trial planned twice, from any spec, has the same key; a fine-tuning
trial started from a different pre-training has a different key. For a derived trial the
parent's checkpoint path (``train.init_from``) is not part of the key (it depends on where the
storage lives); the parent's key is.

Every trial config is validated here, before anything runs; an error names the sweep file, the
stage and the axis values of the offending trial.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segssl.config import (
    ConfigError,
    RunConfig,
    config_hash,
    flatten,
    keyed_dump,
    parse_run_config,
    set_path,
)
from segssl.orchestrate.spec import Resources, SearchSpec, SpecError, SweepSpec

__all__ = [
    "PLAN_FILE",
    "Plan",
    "count_trials",
    "read_plan",
    "write_plan",
    "SearchStage",
    "Trial",
    "deep_merge",
    "plan_sweep",
    "resolve_trial_config",
    "run_name",
    "search_probe",
    "trial_key",
]

_PATH_KEYS = ("data.root", "data.cache")
PLAN_FILE = "plan.json"
PLAN_FORMAT = "segssl-plan"


@dataclass(frozen=True)
class Trial:
    """One planned trial.

    Attributes:
        key: content-addressed key (16 hex digits).
        stage: name of the sweep stage.
        seed: the run's seed.
        config: the resolved run config (``train.init_from`` set for derived trials).
        overrides: the axis values that made this trial (``{"method.alpha": 0.5}``).
        variant: the variant label, if the stage has ``variants``.
        parent_key: key of the parent trial for a derived stage.
        parent_stage: name of the parent stage.
        parent_params: the parent's identifying params, logged with the parent stage as prefix.
        name: a readable run name for the MLflow UI.
        resources: per-trial resources.
    """

    key: str
    stage: str
    seed: int
    config: RunConfig
    overrides: dict[str, Any]
    variant: str | None
    parent_key: str | None
    parent_stage: str | None
    parent_params: dict[str, Any]
    name: str
    resources: Resources

    def params(self) -> dict[str, Any]:
        """Params to log: the flattened resolved config, the variant and the parent's params."""
        out = flatten(self.config)
        if self.variant is not None:
            out["variant"] = self.variant
        out.update(self.parent_params)
        return out

    def identity(self) -> dict[str, Any]:
        """Params that identify this trial to its children (prefixed by this stage's name)."""
        keep = {k: v for k, v in flatten(self.config).items() if k.startswith("method.")}
        keep.update(self.overrides)
        if self.variant is not None:
            keep["variant"] = self.variant
        out = {f"{self.stage}.{k}": v for k, v in keep.items()}
        out.update(self.parent_params)
        return out


@dataclass(frozen=True)
class SearchStage:
    """A stage explored by Optuna: its trials are created while it runs."""

    stage: str
    base: dict[str, Any]
    search: SearchSpec
    seed: int
    resources: Resources
    epochs: int = 1  # train.epochs of the stage (ASHA's max_t)


@dataclass
class Plan:
    """Trials per stage in dependency order."""

    spec: SweepSpec
    source: str
    order: list[str]
    trials: dict[str, list[Trial]] = field(default_factory=dict)
    searches: dict[str, SearchStage] = field(default_factory=dict)
    storage: Path = Path()

    def all_trials(self) -> list[Trial]:
        """Every grid trial, parents before children."""
        return [t for s in self.order for t in self.trials.get(s, [])]

    def by_key(self) -> dict[str, Trial]:
        """Trials indexed by key."""
        return {t.key: t for t in self.all_trials()}


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``over`` into a copy of ``base`` (mappings merge, other values replace).

    Dotted keys in ``over`` (``{"method.alpha": 0.5}``) are set as paths.
    """
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if "." in k:
            set_path(out, k, copy.deepcopy(v))
        elif isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def trial_key(config: RunConfig, parent_key: str | None) -> str:
    """Content-addressed key: hash of the resolved config (seed included) and the parent's key."""
    data = keyed_dump(config)
    if parent_key is not None:
        data["train"]["init_from"] = None  # a storage path; the parent key stands for it
    return config_hash({"config": data, "parent": parent_key})


def _combinations(stage: Any) -> list[tuple[dict[str, Any], str | None, set[str]]]:
    """Every (axis values, variant, keys the run name leaves out) of a stage.

    A zip group that pairs each dataset with its settings is named by the dataset alone
    (``dataset=msd-spleen``, not its root, split, crop and lr); in other zip groups every member
    with a scalar value names the run (``K=10 heads=1``), mappings and lists never do.
    """
    axes: list[list[tuple[dict[str, Any], str | None]]] = []
    unnamed: set[str] = set()
    if stage.variants:
        axes.append([({}, name) for name in stage.variants])
    for key, values in stage.grid.items():
        axes.append([({key: v}, None) for v in values])
    for group in stage.zip:
        n = len(next(iter(group.values())))
        axes.append([({k: vals[i] for k, vals in group.items()}, None) for i in range(n)])
        unnamed |= _zip_unnamed(group)
    combos = []
    for parts in itertools.product(*axes) if axes else [()]:
        values: dict[str, Any] = {}
        variant = None
        for vals, var in parts:
            values.update(vals)
            variant = var if var is not None else variant
        combos.append((values, variant, unnamed))
    return combos


def _zip_unnamed(group: Mapping[str, list[Any]]) -> set[str]:
    """The members of a zip group its run names leave out: all but ``data.dataset`` when the
    group has it, else its mappings and lists; a member left out is named after all where the
    others do not tell two of the group's entries apart (one dataset at two learning rates)."""
    n = len(next(iter(group.values())))
    scalar = [
        k for k, vals in group.items() if not any(isinstance(v, Mapping | list) for v in vals)
    ]
    named = ["data.dataset"] if "data.dataset" in group else list(scalar)

    def told_apart(keys: list[str]) -> int:
        return len({tuple(_fmt(group[k][i]) for k in keys) for i in range(n)})

    for k in [*scalar, *group]:  # scalars first: they read best in a name
        if told_apart(named) == n:
            break
        if k not in named and told_apart([*named, k]) > told_apart(named):
            named.append(k)
    return set(group) - set(named)


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return str(v.get("name", "{...}"))
    return str(v)


def run_name(
    config: RunConfig,
    overrides: Mapping[str, Any],
    variant: str | None = None,
    parent_name: str | None = None,
) -> str:
    """A name a person can read in the MLflow UI: ``bim alpha=0.5 K=40 | 1 scan | seed 2``."""
    skip = {"data.labeled_scans", "data.target", "seed"}
    head = config.method.name
    if variant is not None:
        head += f" {variant}"
    extras = " ".join(f"{_short(k)}={_fmt(v)}" for k, v in overrides.items() if k not in skip)
    if extras:
        head += f" {extras}"
    if parent_name is not None:
        head = f"{parent_name.split(' | ')[0]} > {head}"
    parts = [head]
    if config.stage != "pretrain":
        if config.data.target != "all":
            parts.append(config.data.target)
        n = config.data.labeled_scans
        parts.append(f"{n} scan" if n == 1 else f"{n} scans")
    parts.append(f"seed {config.seed}")
    return " | ".join(parts)


def _absolutise(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for dotted in _PATH_KEYS:
        node: Any = out
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            p = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(p if p.is_absolute() else (root / p).resolve())
    return out


def resolve_trial_config(raw: Mapping[str, Any], where: str) -> RunConfig:
    """Validate one trial's raw config; the error names ``where`` (file, stage, axis values)."""
    try:
        return parse_run_config(raw, source=where)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None


def search_probe(stage: SearchStage, source: str = "<sweep>") -> RunConfig:
    """The config of a search stage's trial at the first value of every search dimension: it
    validates the stage before it runs and stands for its trials in the table preflight."""
    probe = deep_merge(stage.base, {"seed": stage.seed})
    for key, dim in stage.search.space.items():
        sample = dim.choice[0] if dim.choice else (dim.uniform or dim.loguniform)[0]  # type: ignore[index]
        probe = deep_merge(probe, {key: sample})
    return resolve_trial_config(probe, f"{source}: stages.{stage.stage} (search space probe)")


def _inherited(parent: Trial, keys: list[str], where: str) -> dict[str, Any]:
    """``{dotted key: value}`` of ``keys`` in the parent trial's resolved config.

    Raises:
        SpecError: a key the parent's config does not have.
    """
    data = parent.config.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SpecError(
                    f"{where}: {key!r} is not a key of the parent trial's config "
                    f"(stage {parent.stage!r}); keys look like 'data.dataset'"
                )
            node = node[part]
        out[key] = node
    return out


def _check_start(cfg: RunConfig, where: str) -> None:
    """A stage without ``from`` whose method starts from a pre-trained checkpoint (e.g. the
    decoder stage of a stage-wise pre-training) must give ``train.init_from`` itself.

    Raises:
        SpecError: naming the stage, the method and what to add.
    """
    from segssl.methods import get_method  # the method registry sits below orchestration

    if get_method(cfg.method.name).init == "required" and not cfg.train.init_from:
        raise SpecError(
            f"{where}: method {cfg.method.name!r} starts from a pre-trained checkpoint, but the "
            "stage has no 'from:' (a parent stage whose checkpoint it fine-tunes) and no "
            "train.init_from"
        )


def check_device(device: str, res: Resources, res_key: str, where: str) -> None:
    """``train.device`` against the GPUs Ray gives each trial (``res.gpu``, set at ``res_key``).

    Ray hides every GPU from a trial that asks for none (``CUDA_VISIBLE_DEVICES`` empty) and
    shows a trial asking for ``g`` GPUs ``max(1, int(g))`` of them, renumbered from 0. So
    ``cuda`` with no GPU, or ``cuda:N`` beyond the trial's devices, fails in every trial; and
    ``cpu`` with a GPU share holds a GPU that no part of a trial uses (model, evaluation and
    the memory cap all follow ``train.device``) while keeping other trials off it: refused
    too. ``auto`` follows what Ray gives; other strings are the engine's to judge.

    Raises:
        SpecError: naming ``where`` (file and stage), both keys and what was expected.
    """
    name, _, index = device.partition(":")
    if name == "cuda" and res.gpu == 0:
        raise SpecError(
            f"{where}: train.device={device!r} needs a GPU, but {res_key}.gpu is 0, so Ray "
            "gives the trial none and every trial would fail at its start; expected "
            f"{res_key}.gpu > 0 (1, or a share such as 0.25) or train.device 'auto' or 'cpu'"
        )
    visible = max(1, int(res.gpu))
    if name == "cuda" and index.isdigit() and int(index) >= visible:
        raise SpecError(
            f"{where}: train.device={device!r}, but with {res_key}.gpu={res.gpu:g} a trial sees "
            f"{visible} GPU(s), numbered from 0 (Ray picks which); expected train.device 'cuda' "
            f"or 'auto' (or cuda:0..cuda:{visible - 1})"
        )
    if name == "cpu" and res.gpu > 0:
        raise SpecError(
            f"{where}: train.device='cpu' with {res_key}.gpu={res.gpu:g}: every trial would "
            "hold a GPU (share) it never uses and keep other trials off it; expected "
            f"{res_key}.gpu: 0 for CPU trials, or train.device 'auto' or 'cuda'"
        )


def check_cuda_switch(key: str, value: str, res: Resources, res_key: str, where: str) -> None:
    """``train.<key>`` (``amp`` or ``channels_last``) forced ``on`` needs a CUDA device (the
    engine refuses it on the CPU at a trial's start): with no GPU share Ray gives the trial none.

    Raises:
        SpecError: naming ``where`` (file and stage), both keys and what was expected.
    """
    if value == "on" and res.gpu == 0:
        raise SpecError(
            f"{where}: train.{key}='on' needs a CUDA device, but {res_key}.gpu is 0, so Ray "
            "gives the trial none and every trial would fail at its start; expected "
            f"{res_key}.gpu > 0 or train.{key} 'auto' or 'off' (a CPU profile can set it)"
        )


_CUDA_SWITCHES = ("amp", "channels_last")


def _values(space: Mapping[str, Any], key: str, default: Any) -> list[Any]:
    """The values a search stage may give ``key``: its dimension's choices, else ``default``
    (the probe config's value; a dimension without choices is a range of numbers)."""
    dim = space.get(key)
    return list(dim.choice) if dim is not None and dim.choice else [default]


def _parent_checkpoint(storage: Path, parent_key: str, which: str) -> str:
    return str(storage / "trials" / parent_key / "checkpoints" / f"{which}.pt")


def count_trials(spec: SweepSpec) -> dict[str, int]:
    """Trials per stage, computed from the axis lengths without expanding anything.

    A search stage counts its ``num_samples``. Used to refuse a sweep above ``max_trials``
    before planning (expanding millions of configs would take minutes and gigabytes).
    """
    counts: dict[str, int] = {}
    for name in spec.stage_order():
        st = spec.stages[name]
        if st.search is not None:
            counts[name] = st.search.num_samples
            continue
        combos = max(len(st.variants), 1)
        for values in st.grid.values():
            combos *= len(values)
        for group in st.zip:
            combos *= len(next(iter(group.values())))
        own = spec.stage_seeds(name)
        parents = 1 if st.from_ is None else counts[st.from_]
        seeds = len(own) if own is not None else 1  # a derived stage inherits its parent's seed
        counts[name] = parents * combos * seeds
    return counts


def check_trial_count(spec: SweepSpec, source: str) -> dict[str, int]:
    """:func:`count_trials`, refusing a sweep above ``spec.max_trials``.

    Raises:
        SpecError: with the count per stage and the limit.
    """
    counts = count_trials(spec)
    total = sum(counts.values())
    if total > spec.max_trials:
        per = ", ".join(f"{s}: {n:,}" for s, n in counts.items())
        raise SpecError(
            f"{source}: the sweep plans {total:,} trials ({per}), more than max_trials="
            f"{spec.max_trials:,}; shrink the grid, or raise 'max_trials' in the sweep if you "
            "mean it"
        )
    return counts


def plan_sweep(
    spec: SweepSpec,
    source: str = "<sweep>",
    storage: str | Path | None = None,
    root: str | Path | None = None,
) -> Plan:
    """Expand ``spec`` into trials; validate every trial config.

    Args:
        spec: the validated sweep spec.
        source: the sweep file (for error messages).
        storage: where trial workdirs live (``<storage>/trials/<key>``); default
            ``spec.storage`` or ``<root>/segssl-runs/<name>``.
        root: directory that relative data paths and the default storage are resolved against
            (default: the current directory).

    Raises:
        SpecError: a trial config is invalid (the message names stage and axis values).
    """
    root_dir = Path(root or Path.cwd()).resolve()
    store = Path(storage or spec.storage or root_dir / "segssl-runs" / spec.name)
    store = (store if store.is_absolute() else root_dir / store).resolve()
    plan = Plan(spec=spec, source=source, order=spec.stage_order(), storage=store)
    base = _absolutise(deep_merge({}, spec.base), root_dir)
    for name in plan.order:
        st = spec.stages[name]
        stage_raw = deep_merge(base, _absolutise(deep_merge({}, st.config), root_dir))
        res = spec.stage_resources(name)
        res_key = f"stages.{name}.resources" if st.resources is not None else "resources"
        if st.search is not None:
            seeds = spec.stage_seeds(name) or spec.seeds
            if len(seeds) != 1:
                raise SpecError(
                    f"{source}: stages.{name}: a search stage runs one seed per sample; "
                    f"give 'seeds' with one seed (got {seeds})"
                )
            stage = SearchStage(name, stage_raw, st.search, seeds[0], res)
            cfg = search_probe(stage, source)
            space, where = st.search.space, f"{source}: stages.{name}"
            for device in _values(space, "train.device", cfg.train.device):
                check_device(str(device), res, res_key, where)
            for key in _CUDA_SWITCHES:
                for value in _values(space, f"train.{key}", getattr(cfg.train, key)):
                    check_cuda_switch(key, str(value), res, res_key, where)
            plan.searches[name] = SearchStage(
                name, stage_raw, st.search, seeds[0], res, cfg.train.epochs
            )
            plan.trials[name] = []
            continue
        parents: list[Trial | None] = [None] if st.from_ is None else plan.trials[st.from_]
        trials: list[Trial] = []
        seen: set[str] = set()
        for parent in parents:
            seeds = spec.stage_seeds(name) or ([parent.seed] if parent else spec.seeds)
            parent_raw = stage_raw
            if parent is not None and st.inherit:
                own = _absolutise(deep_merge({}, st.config), root_dir)
                taken = _inherited(parent, st.inherit, f"{source}: stages.{name}.inherit")
                parent_raw = deep_merge(deep_merge(base, taken), own)
            for values, variant, unnamed in _combinations(st):
                for seed in seeds:
                    raw = parent_raw
                    if variant is not None:
                        raw = deep_merge(raw, st.variants[variant])
                    raw = deep_merge(raw, {**values, "seed": seed})
                    desc = ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
                    where = f"{source}: stages.{name} trial ({desc or 'base'}"
                    where += f"{', variant=' + variant if variant else ''}, seed={seed})"
                    cfg = resolve_trial_config(raw, where)
                    check_device(cfg.train.device, res, res_key, where)
                    for key in _CUDA_SWITCHES:
                        check_cuda_switch(key, getattr(cfg.train, key), res, res_key, where)
                    if parent is None:
                        _check_start(cfg, f"{where.split(' trial (')[0]}")
                    pkey = parent.key if parent else None
                    key = trial_key(cfg, pkey)
                    if parent is not None:
                        ckpt = _parent_checkpoint(store, parent.key, st.checkpoint)
                        cfg = cfg.model_copy(
                            update={"train": cfg.train.model_copy(update={"init_from": ckpt})}
                        )
                    if key in seen:
                        raise SpecError(
                            f"{where}: plans the same trial twice (key {key}); two axis values "
                            "resolve to the same config"
                        )
                    seen.add(key)
                    trials.append(
                        Trial(
                            key=key,
                            stage=name,
                            seed=seed,
                            config=cfg,
                            overrides=dict(values),
                            variant=variant,
                            parent_key=pkey,
                            parent_stage=st.from_,
                            parent_params=parent.identity() if parent else {},
                            name=run_name(
                                cfg,
                                {k: v for k, v in values.items() if k not in unnamed},
                                variant,
                                parent.name if parent else None,
                            ),
                            resources=res,
                        )
                    )
        plan.trials[name] = trials
    return plan


def plan_record(plan: Plan) -> dict[str, Any]:
    """The plan as plain data: what ``<storage>/plan.json`` holds."""
    trials = [
        {
            "key": t.key,
            "stage": t.stage,
            "seed": t.seed,
            "name": t.name,
            "variant": t.variant,
            "overrides": t.overrides,
            "parent_key": t.parent_key,
            "parent_stage": t.parent_stage,
            "params": t.params(),
            "config": t.config.model_dump(mode="json"),
        }
        for t in plan.all_trials()
    ]
    searches = {
        name: {
            "base": s.base,
            "space": s.search.model_dump(mode="json"),
            "seed": s.seed,
            "epochs": s.epochs,
        }
        for name, s in plan.searches.items()
    }
    return {
        "format": PLAN_FORMAT,
        "version": 1,
        "sweep": plan.spec.name,
        "source": plan.source,
        "storage": str(plan.storage),
        "order": plan.order,
        "trials": trials,
        "searches": searches,
    }


def write_plan(plan: Plan) -> Path:
    """Write ``<storage>/plan.json`` (atomically): trials, keys, resolved configs, parents.

    It is the hand-off between ``segssl sweep``, ``segssl table`` and ``segssl submit``: what was
    planned, independent of what has run.
    """
    import json
    import os
    import uuid

    plan.storage.mkdir(parents=True, exist_ok=True)
    path = plan.storage / PLAN_FILE
    tmp = path.with_name(f".{PLAN_FILE}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(plan_record(plan), indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Read a ``plan.json`` written by :func:`write_plan`.

    Raises:
        SpecError: missing, unreadable or not a segssl plan.
    """
    import json

    p = Path(path)
    if p.is_dir():
        p = p / PLAN_FILE
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SpecError(f"{p}: no plan (run `segssl sweep` or `segssl sweep --dry-run`)") from None
    except (OSError, ValueError) as exc:
        raise SpecError(f"{p}: unreadable plan ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
        raise SpecError(f"{p}: not a segssl plan (expected format {PLAN_FORMAT!r})")
    return data
