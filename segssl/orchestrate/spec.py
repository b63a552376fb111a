"""Sweep spec: one YAML file per study, validated before anything runs.

A sweep has a ``name`` (the MLflow experiment), a ``base`` run config shared by every stage, and
one or more **stages**. Each stage deep-merges its own ``config`` over ``base`` and multiplies it
by its axes; a stage with ``from: <stage>`` starts every one of its trials from the checkpoint of
a trial of that stage (each parent trial runs once and feeds all the children derived from it)::

    name: bim-alpha
    seeds: [0, 1, 2]
    resources: {cpu: 1, gpu: 0.25}          # per trial; fractions pack trials on one GPU
    max_concurrent: 8
    base:  {data: {dataset: acdc, root: data/acdc}}
    stages:
      pretrain:
        config: {stage: pretrain, method: {name: bim}}
        grid: {method.alpha: [0, 0.25, 0.5, 0.75, 1.0]}
      finetune:
        from: pretrain
        checkpoint: last                     # which checkpoint of the parent: last | best
        config: {stage: finetune, method: {name: finetune}}
        grid: {data.labeled_scans: [1, 2, 4], data.target: [lv, rv, myo]}
    tables: [...]                            # see segssl.table_spec

Axes of a stage (all optional, multiplied together):

- ``grid``: ``dotted.key -> [values]``, the cartesian product;
- ``zip``: a list of groups ``{key: [values], key2: [values]}`` whose lists have equal length and
  move together (value i of every key belongs to combination i);
- ``variants``: ``label -> overrides`` (nested or dotted keys), named configurations such as the
  rows of a paper table (``only-mi: {method.lambda_cc: 0}``); the label is logged as param
  ``variant``;
- ``search``: an Optuna search space (``uniform``/``loguniform``/``choice``) explored by TPE for
  ``num_samples`` trials on the validation metric; a search stage has no other axes and cannot
  feed another stage (its trials are only known while it runs).

``inherit: [data.dataset, data.root, ...]`` (a derived stage): each trial takes these keys from
its parent trial's resolved config (above ``base``, below the stage's own config and axes), so a
stage that follows a stage sweeping datasets fine-tunes each pre-training on its own dataset.

Seeds: a root stage (no ``from``) runs every combination for each seed in its ``seeds`` (default:
the sweep's ``seeds``); a derived stage inherits its parent trial's seed, unless it lists its own
``seeds`` (then each parent trial is fanned out over them).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segssl.config import ConfigError, config_hash, format_validation_error, read_yaml
from segssl.table_spec import TableSpec

__all__ = [
    "Resources",
    "SearchDim",
    "SearchSpec",
    "SpecError",
    "StageSpec",
    "SweepSpec",
    "load_sweep",
    "parse_sweep",
    "spec_hash",
]


class SpecError(ConfigError):
    """A sweep spec is invalid; the message names the file and the key path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """Resources of one trial. Fractions let several small 2D trials share one GPU."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"a trial asking for more than one GPU needs whole GPUs, got {v}")
        return v


class SearchDim(_Strict):
    """One dimension of a search space: exactly one of ``uniform``, ``loguniform``, ``choice``."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one(self) -> SearchDim:
        given = [k for k in ("uniform", "loguniform", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"expected exactly one of uniform/loguniform/choice, got {given or 'none'}"
            )
        if self.choice is not None and not self.choice:
            raise ValueError("choice is empty")
        for k in ("uniform", "loguniform"):
            lo_hi = getattr(self, k)
            if lo_hi is not None:
                lo, hi = lo_hi
                if not lo < hi:
                    raise ValueError(f"{k}: expected low < high, got {list(lo_hi)}")
                if k == "loguniform" and lo <= 0:
                    raise ValueError(f"loguniform: expected a positive low bound, got {lo}")
        return self


class SearchSpec(_Strict):
    """Optuna (TPE, seeded) search over dotted config keys, optionally with ASHA early stopping."""

    space: dict[str, SearchDim]
    num_samples: int = Field(8, ge=1)
    metric: str = "val/dsc"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(5, ge=1)  # ASHA: epochs before a trial may be stopped

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, SearchDim]) -> dict[str, SearchDim]:
        if not v:
            raise ValueError("search space is empty")
        return v


class StageSpec(_Strict):
    """One stage: its config over ``base``, its axes, where it starts from."""

    from_: str | None = Field(None, alias="from")
    checkpoint: Literal["last", "best"] = "last"
    # dotted config keys (or whole sections) each trial takes from its parent trial's resolved
    # config, e.g. [data.dataset, data.root] when the parent stage sweeps datasets; they sit
    # between ``base`` and this stage's own config and axes
    inherit: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    zip: list[dict[str, list[Any]]] = Field(default_factory=list)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search: SearchSpec | None = None
    seeds: list[int] | None = None
    resources: Resources | None = None
    log_checkpoint: bool = False  # log the best checkpoint as an MLflow artifact

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid axis {key!r} is empty; give at least one value")
            _check_key(key)
        return v

    @field_validator("zip")
    @classmethod
    def _zip(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for i, group in enumerate(v):
            if len(group) < 1:
                raise ValueError(f"zip group {i} is empty")
            lengths = {k: len(vals) for k, vals in group.items()}
            for key in group:
                _check_key(key)
            if 0 in lengths.values():
                raise ValueError(f"zip group {i}: empty value list in {lengths}")
            if len(set(lengths.values())) > 1:
                raise ValueError(f"zip group {i}: lists must have equal lengths, got {lengths}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int] | None) -> list[int] | None:
        return v if v is None else _check_seeds(v)

    @model_validator(mode="after")
    def _axes(self) -> StageSpec:
        if self.search is not None and (self.grid or self.zip or self.variants):
            raise ValueError(
                "a stage with 'search' cannot also have grid/zip/variants; put fixed values in "
                "'config' or add them to the search space as 'choice'"
            )
        keys: list[str] = list(self.grid)
        for group in self.zip:
            keys.extend(group)
        if self.search is not None:
            keys.extend(self.search.space)
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"keys {dup} appear in more than one axis")
        if "seed" in keys:
            raise ValueError("'seed' is not an axis; use the 'seeds' list")
        for key in self.inherit:
            _check_key(key)
        if self.inherit and self.from_ is None:
            raise ValueError("'inherit' takes keys from the parent trial: it needs 'from'")
        return self


class SweepSpec(_Strict):
    """A whole sweep. See the module docstring for the YAML layout."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, StageSpec]
    seeds: list[int] = Field(default_factory=lambda: [0])
    resources: Resources = Resources()
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)  # retries of a failed trial (from its last checkpoint)
    storage: str | None = None  # trial workdirs and Ray results; None: <cwd>/segssl-runs/<name>
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; None: all cores
    # planning limit: a sweep planning more trials is refused (counted before expansion)
    max_trials: int = Field(100_000, ge=1)
    tables: list[TableSpec] = Field(default_factory=list)
    # set by segssl.orchestrate.profiles from the file's 'profiles:' section and --profile
    profile: Literal["smoke", "paper"] = "paper"
    phantoms: dict[str, Any] | None = None  # smoke: the phantom set written on first use

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return _check_seeds(v)

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, StageSpec]) -> dict[str, StageSpec]:
        if not v:
            raise ValueError("no stages; give at least one")
        for name in v:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"stage name {name!r}: use letters, digits, '-' and '_'")
        return v

    @model_validator(mode="after")
    def _graph(self) -> SweepSpec:
        for name, st in self.stages.items():
            if st.from_ is not None:
                if st.from_ not in self.stages:
                    known = ", ".join(sorted(self.stages))
                    raise ValueError(
                        f"stages.{name}.from: {st.from_!r} names no stage (stages: {known})"
                    )
                if self.stages[st.from_].search is not None:
                    raise ValueError(
                        f"stages.{name}.from: stage {st.from_!r} is a search stage and cannot "
                        "feed another stage"
                    )
        self.stage_order()  # raises on cycles
        names = {t.name for t in self.tables}
        if len(names) != len(self.tables):
            raise ValueError("tables: two tables share a name")
        for t in self.tables:
            if t.stage is not None and t.stage not in self.stages:
                raise ValueError(f"tables.{t.name}.stage: {t.stage!r} names no stage")
        return self

    def stage_order(self) -> list[str]:
        """Stage names in dependency order (parents first); raises ``ValueError`` on a cycle."""
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, path: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join([*path[path.index(name) :], name])
                raise ValueError(f"stages form a cycle through 'from': {cycle}")
            state[name] = 1
            parent = self.stages[name].from_
            if parent is not None:
                visit(parent, [*path, name])
            state[name] = 2
            order.append(name)

        for name in self.stages:
            visit(name, [])
        return order

    def stage_seeds(self, stage: str) -> list[int] | None:
        """Seeds a stage fans out over: its own, else the sweep's for a root stage, else None."""
        st = self.stages[stage]
        if st.seeds is not None:
            return st.seeds
        return self.seeds if st.from_ is None else None

    def stage_resources(self, stage: str) -> Resources:
        """Per-trial resources of a stage (its own, else the sweep's)."""
        return self.stages[stage].resources or self.resources


def _check_seeds(v: list[int]) -> list[int]:
    """A non-empty list of distinct seeds (a stage's or the sweep's)."""
    if not v:
        raise ValueError("seeds is empty; give at least one seed")
    if len(set(v)) != len(v):
        raise ValueError(f"duplicate seeds in {v}")
    return v


def _check_key(key: str) -> None:
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"axis key {key!r} is not a dotted config key like 'method.alpha'")


def _format(exc: ValidationError, source: str) -> str:
    return format_validation_error(
        exc, source, what="sweep spec", strip_value_prefix=True, model=SweepSpec
    )


def parse_sweep(
    raw: Any,
    source: str = "<sweep>",
    profile: str | None = None,
    check_overrides: bool = True,
) -> SweepSpec:
    """Validate a plain mapping into a :class:`SweepSpec`; raise :class:`SpecError` on failure.

    ``profile`` (``smoke`` | ``paper``; None: ``paper``) applies the mapping's ``profiles:``
    section (:func:`segssl.orchestrate.profiles.apply_profile`); ``check_overrides=False``
    skips checking its run-config overrides (imports torch; for commands that only read runs).
    """
    from segssl.orchestrate.profiles import apply_profile

    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    raw = apply_profile(raw, profile, source, check_overrides)
    try:
        return SweepSpec.model_validate(dict(raw))
    except ValidationError as exc:
        raise SpecError(_format(exc, source)) from None


def load_sweep(
    path: str | Path, profile: str | None = None, check_overrides: bool = True
) -> SweepSpec:
    """Read and validate a sweep YAML file in ``profile`` (every trial config is validated by
    the planner; ``check_overrides``: see :func:`parse_sweep`)."""
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise SpecError(str(exc)) from None
    return parse_sweep(raw, source=str(path), profile=profile, check_overrides=check_overrides)


def spec_hash(spec: SweepSpec) -> str:
    """Identity of a study: base and stage configs, stage graph and axis *keys*.

    Seeds and axis *values* are left out, so adding a seed or a grid value keeps the identity
    (the sweep grows; only the new trials run). Changing the base or a stage config, the stage
    graph or which keys are swept changes it. Stored as a tag of the MLflow experiment so that a
    different study cannot silently reuse a sweep name.
    """
    stages = {}
    for name, st in spec.stages.items():
        stages[name] = {
            **({"inherit": st.inherit} if st.inherit else {}),
            "from": st.from_,
            "checkpoint": st.checkpoint,
            "config": st.config,
            "grid": sorted(st.grid),
            "zip": sorted(sorted(g) for g in st.zip),
            "variants": bool(st.variants),
            "search": None
            if st.search is None
            else {
                "space": st.search.model_dump(mode="json")["space"],
                "metric": st.search.metric,
                "mode": st.search.mode,
            },
        }
    return config_hash({"base": spec.base, "stages": stages})
