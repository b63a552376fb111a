"""Profiles of a sweep: ``--profile smoke|paper``, overrides in the sweep's ``profiles:`` section.

One sweep file describes one study; its ``profiles:`` section says how the study shrinks to a
*smoke* run (synthetic phantoms in the dataset's real on-disk layout, a tiny U-Net, a few
iterations: minutes on two CPU cores) and what, if anything, the *paper* run changes (the file's
own settings are the paper's protocol, so ``paper: {}`` is the usual entry)::

    profiles:
      paper: {}
      smoke:
        phantoms: {dataset: acdc, scans: 20, size: 64}   # synthesised on first use, cached
        seeds: [0, 1, 2]
        base:                                  # nested or dotted keys, deep-merged over base
          data: {preprocess: {size: [64, 64]}, split: {sizes: [28, 4, 8]}}
          train.epochs: 4
        stages:
          pretrain: {config: {optim: {lr: 1.0e-3}}}
          finetune: {grid: {data.labeled_scans: [1, 2, 4]}}   # axes must exist already

Rules (each checked before any work, with the file and key path in the message):

* a profile may set ``seeds``, ``resources``, ``max_concurrent``, ``max_failures``,
  ``num_cpus``, ``base``, ``stages`` and (smoke) ``phantoms``;
* every overridden config key must be a key of the run config the stage resolves to (a typo
  or a key that does not exist is an error, not a new setting); ``stages.<s>`` must name a
  stage, its ``grid``/``variants`` entries must name existing axes and labels;
* the smoke profile runs as experiment ``<name>-smoke`` with its own storage, so its trials
  never mix with the paper's (their keys differ too: the configs differ);
* ``phantoms`` sets ``base.data.root`` to ``segssl-runs/phantoms/<dataset>-<scans>x<size>-s<seed>``
  (relative, resolved like every data path); :func:`ensure_phantoms` writes them on first use.
  ``also: [msd-prostate, mmwhs-mr]`` writes phantoms of further datasets (same scans, size and
  seed) beside it, for sweeps over several datasets: their stages point ``data.root`` at
  ``segssl-runs/phantoms/<dataset>-<scans>x<size>-s<seed>``.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segssl.config import ConfigError, flatten
from segssl.orchestrate.spec import SpecError

__all__ = [
    "PROFILES",
    "ProfileError",
    "apply_profile",
    "ensure_phantoms",
    "phantom_dir",
    "profile_name",
]

PROFILES = ("smoke", "paper")
_TOP_KEYS = (
    "seeds",
    "resources",
    "max_concurrent",
    "max_failures",
    "num_cpus",
    "base",
    "stages",
    "phantoms",
)
_STAGE_KEYS = ("config", "grid", "zip", "variants", "seeds", "resources", "search")
_PHANTOM_KEYS = ("dataset", "scans", "size", "seed", "also")


class ProfileError(SpecError):
    """A profile is unknown or overrides something the sweep does not have."""


def profile_name(name: str, profile: str) -> str:
    """The experiment name of a sweep run in ``profile`` (``<name>-smoke``, or ``<name>``)."""
    return name if profile == "paper" else f"{name}-{profile}"


def _nest(over: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``train.epochs: 4``) become nested mappings; nested ones are kept."""
    out: dict[str, Any] = {}
    for key, value in over.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        leaf = _nest(value) if isinstance(value, Mapping) else value
        if isinstance(leaf, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = _merge(node[parts[-1]], leaf)
        else:
            node[parts[-1]] = leaf
    return out


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _stage_keys(raw: Mapping[str, Any], stage: str, source: str) -> dict[str, Any] | None:
    """Flattened keys (with values) of the run configs ``stage`` resolves to: the stage's config,
    or the union over its ``variants`` (a variant may supply ``method``).

    Returns:
        ``None`` when no config of the stage resolves (a key only a grid axis supplies, or an
        invalid value such as ``metrics.hd95: maxx``): the planner then validates every trial
        config, the profile's overrides merged, and names the key itself; the keys written in
        the file alone would call real keys unknown and hide that error.
    """
    from segssl.orchestrate.plan import deep_merge, resolve_trial_config

    st = raw["stages"][stage] or {}
    cfg = deep_merge(raw.get("base") or {}, st.get("config") or {})
    variants = st.get("variants") if isinstance(st.get("variants"), Mapping) else None
    configs = [deep_merge(cfg, _nest(v or {})) for v in variants.values()] if variants else [cfg]
    known: dict[str, Any] = {}
    resolved = False
    for one in configs:
        try:
            known.update(flatten(resolve_trial_config(one, f"{source}: stages.{stage}")))
            resolved = True
        except ConfigError:
            continue
    return known if resolved else None


def _check_config_keys(
    over: Mapping[str, Any], known: dict[str, Any] | None, where: str, source: str
) -> None:
    if known is None:
        return  # the stage's config does not resolve: the planner checks (see _stage_keys)
    for key in flatten(_nest(over)):
        if key in known or any(k.startswith(key + ".") for k in known):
            continue
        parents = [k for k in known if key.startswith(k + ".")]
        if parents and all(known[p] in (None, {}) for p in parents):
            continue  # a sub-key of a section that is unset by default (e.g. split.files)
        from segssl.config import did_you_mean

        raise ProfileError(
            f"{source}: {where}: overrides {key!r}, which the run config does not have"
            f"{did_you_mean(key, list(known))}"
        )


def _check_mapping(value: Any, where: str, source: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ProfileError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
    return value


def _apply_stage(
    raw: dict[str, Any],
    name: str,
    over: Mapping[str, Any],
    where: str,
    source: str,
    check: bool = True,
) -> None:
    stages = raw.get("stages") or {}
    if name not in stages:
        raise ProfileError(
            f"{source}: {where}: names no stage of the sweep (stages: {', '.join(stages)})"
        )
    st = dict(stages[name] or {})
    bad = [k for k in over if k not in _STAGE_KEYS]
    if bad:
        raise ProfileError(
            f"{source}: {where}: unknown key(s) {bad}; a profile may set {', '.join(_STAGE_KEYS)}"
        )
    if "config" in over:
        cfg = _check_mapping(over["config"], f"{where}.config", source)
        if check:
            _check_config_keys(cfg, _stage_keys(raw, name, source), f"{where}.config", source)
        st["config"] = _merge(st.get("config") or {}, _nest(cfg))
    for axis in ("grid", "variants"):
        if axis not in over:
            continue
        given = _check_mapping(over[axis], f"{where}.{axis}", source)
        have = dict(st.get(axis) or {})
        for key, value in given.items():
            if key not in have:
                raise ProfileError(
                    f"{source}: {where}.{axis}: {key!r} is no {axis} entry of the stage "
                    f"(it has: {', '.join(map(str, have)) or 'none'}); a profile changes axes, "
                    "it does not add them"
                )
            have[key] = _merge(have[key], _nest(value)) if axis == "variants" else value
        st[axis] = have
    for key in ("zip", "seeds", "resources"):
        if key in over:
            st[key] = copy.deepcopy(over[key])
    if "search" in over:
        st["search"] = _merge(st.get("search") or {}, over["search"])
    raw["stages"][name] = st


def _apply_base(
    raw: dict[str, Any], over: Any, source: str, where: str, check: bool = True
) -> None:
    over = _check_mapping(over, where, source)
    if check:
        known: dict[str, Any] | None = {}
        for stage in raw.get("stages") or {}:
            keys = _stage_keys(raw, stage, source)
            known = None if keys is None or known is None else {**known, **keys}
        _check_config_keys(over, known, where, source)
    raw["base"] = _merge(raw.get("base") or {}, _nest(over))


def phantom_dir(ph: Mapping[str, Any]) -> str:
    """The relative folder of a phantom set (one per dataset, size, count and seed)."""
    return f"segssl-runs/phantoms/{ph['dataset']}-{ph['scans']}x{ph['size']}-s{ph['seed']}"


def _apply_phantoms(raw: dict[str, Any], over: Any, source: str, where: str) -> None:
    over = dict(_check_mapping(over, where, source))
    bad = [k for k in over if k not in _PHANTOM_KEYS]
    if bad:
        raise ProfileError(f"{source}: {where}: unknown key(s) {bad}; expected {_PHANTOM_KEYS}")
    data = (raw.get("base") or {}).get("data") or {}
    ph = {"dataset": data.get("dataset", "acdc"), "scans": 20, "size": 64, "seed": 0, **over}
    for key in ("scans", "size", "seed"):
        if not isinstance(ph[key], int) or isinstance(ph[key], bool) or ph[key] < 0:
            raise ProfileError(f"{source}: {where}.{key}: expected a non-negative integer")
    also = ph.get("also", [])
    if not isinstance(also, list) or not all(isinstance(d, str) for d in also):
        raise ProfileError(f"{source}: {where}.also: expected a list of dataset names")
    raw["phantoms"] = ph
    raw["base"] = _merge(raw.get("base") or {}, {"data": {"root": phantom_dir(ph)}})


def apply_profile(
    raw: Any, profile: str | None, source: str = "<sweep>", check_overrides: bool = True
) -> Any:
    """The sweep mapping of ``profile`` (``profiles:`` removed; ``None`` means ``paper``).

    ``check_overrides=False`` skips checking the profiles' run-config overrides against the
    resolved run config (which imports the method registry, hence torch): for commands that
    only read results (``segssl table``); structural mistakes are still reported.

    Raises:
        ProfileError: unknown profile, a smoke run of a sweep without ``profiles.smoke``, or an
            override of a key, stage, axis or variant that does not exist.
    """
    if profile is not None and profile not in PROFILES:
        raise ProfileError(
            f"{source}: unknown profile {profile!r}; expected one of {', '.join(PROFILES)}"
        )
    if not isinstance(raw, Mapping):
        return raw
    out = copy.deepcopy(dict(raw))
    profiles = _check_mapping(out.pop("profiles", None), "profiles", source)
    for name in profiles:
        if name not in PROFILES:
            raise ProfileError(
                f"{source}: profiles.{name}: unknown profile; expected {', '.join(PROFILES)}"
            )
    if profiles:
        _check_shape(out, source)
    profile = profile or "paper"
    if profile != "paper" and profile not in profiles:
        raise ProfileError(
            f"{source}: --profile {profile}: the sweep has no 'profiles: {{{profile}: ...}}' "
            "section (see experiments/sweeps/README.md)"
        )
    for other in profiles:  # a mistake in the profile not chosen is found now, not later
        if other != profile:
            _apply(copy.deepcopy(out), profiles, other, source, check_overrides)
    return _apply(out, profiles, profile, source, check_overrides)


def _check_shape(raw: Mapping[str, Any], source: str) -> None:
    """The parts of the sweep a profile reads and merges into are mappings (or empty).

    Raises:
        SpecError: naming the first part that is not (a variant written as ``IIC: 5`` crashed
            the profile's override check with an AttributeError).
    """

    def need(value: Any, where: str) -> Mapping[str, Any]:
        if value is not None and not isinstance(value, Mapping):
            raise SpecError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
        return value or {}

    base = need(raw.get("base"), "base")
    need(base.get("data"), "base.data")
    for name, stage in need(raw.get("stages"), "stages").items():
        st = need(stage, f"stages.{name}")
        for key in ("config", "grid", "variants", "search"):
            need(st.get(key), f"stages.{name}.{key}")
        for label, variant in need(st.get("variants"), "").items():
            need(variant, f"stages.{name}.variants.{label}")


def _apply(
    out: dict[str, Any],
    profiles: Mapping[str, Any],
    profile: str,
    source: str,
    check: bool = True,
) -> dict[str, Any]:
    """Apply ``profiles[profile]`` (if any) to ``out`` in place and return it."""
    over = _check_mapping(profiles.get(profile), f"profiles.{profile}", source)
    where = f"profiles.{profile}"
    bad = [k for k in over if k not in _TOP_KEYS]
    if bad:
        raise ProfileError(
            f"{source}: {where}: unknown key(s) {bad}; a profile may set {', '.join(_TOP_KEYS)}"
        )
    if "phantoms" in over and profile == "paper":
        raise ProfileError(f"{source}: {where}.phantoms: the paper profile uses the real archive")
    if "phantoms" in over:
        _apply_phantoms(out, over["phantoms"], source, f"{where}.phantoms")
    if "base" in over:
        _apply_base(out, over["base"], source, f"{where}.base", check)
    for name, st_over in _check_mapping(over.get("stages"), f"{where}.stages", source).items():
        st_over = _check_mapping(st_over, f"{where}.stages.{name}", source)
        _apply_stage(out, name, st_over, f"{where}.stages.{name}", source, check)
    for key in ("seeds", "resources", "max_concurrent", "max_failures", "num_cpus"):
        if key in over:
            out[key] = copy.deepcopy(over[key])
    if "name" in out:
        out["name"] = profile_name(str(out["name"]), profile)
    if out.get("storage") and profile != "paper":  # the file's own storage: one per profile
        out["storage"] = profile_name(str(out["storage"]).rstrip("/\\"), profile)
    out["profile"] = profile
    return out


def ensure_phantoms(phantoms: Mapping[str, Any] | None, root: str | Path | None = None) -> Path:
    """Synthesise the profile's phantom archive unless it is already there; return its path.

    Written to a temporary sibling folder and renamed, so an interrupted or concurrent first
    use never leaves a half-written archive that a later run would take for complete.
    """
    from segssl.data import synthesize

    if phantoms is None:
        raise ValueError("the sweep has no phantoms (profile smoke sets them)")
    for other in phantoms.get("also", []):
        ensure_phantoms({**phantoms, "dataset": other, "also": []}, root)
    out = Path(root or Path.cwd()) / phantom_dir(phantoms)
    if (out / ".complete").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    shutil.rmtree(tmp)
    synthesize(
        str(phantoms["dataset"]),
        tmp,
        scans=int(phantoms["scans"]),
        size=int(phantoms["size"]),
        seed=int(phantoms["seed"]),
    )
    (tmp / ".complete").write_text("segssl phantoms\n")
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out
