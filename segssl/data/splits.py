"""Deterministic train/val/test splits and nested labeled subsets.

The split unit is ``subject`` (default: a patient's ED and ES frames stay in one set) or ``scan``
(the BIM paper's protocol: 175/8/17 ACDC scans). Units are shuffled by ``split.seed`` and cut by
``split.sizes`` (default 70/10/20 %), or read from list files. The labeled subset is the first N
of a seeded ordering of the training scans, so the 1-scan set is inside the 2-scan set, and the
ordering does not depend on the run seed; unlabeled = all training scans (as in the papers).
The split is saved as a manifest with its own fingerprint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segssl.config import SplitConfig, config_hash, did_you_mean
from segssl.data.errors import DataError

__all__ = ["labeled_count", "make_split", "read_id_file", "save_split"]

_SETS = ("train", "val", "test")


def labeled_count(spec: int | str, n_train: int) -> int:
    """Resolve ``data.labeled_scans`` (a count or ``"x%"`` of the training scans) to a count.

    Percentages round half up and give at least 1 scan (1.25 % of 78 scans is 1 scan).

    Raises:
        DataError: more labeled scans than training scans, or an unparsable value.
    """
    if isinstance(spec, str):
        text = spec.strip()
        try:
            pct = float(text.rstrip("%"))
        except ValueError:
            raise DataError(f"data.labeled_scans={spec!r}: expected a count or 'x%'") from None
        if not text.endswith("%") or not 0 < pct <= 100:
            raise DataError(f"data.labeled_scans={spec!r}: expected a percentage in (0, 100]")
        n = max(1, math.floor(pct / 100.0 * n_train + 0.5))
    else:
        n = int(spec)
    if n < 1:
        raise DataError(f"data.labeled_scans={spec!r}: expected at least 1 labeled scan")
    if n > n_train:
        raise DataError(
            f"data.labeled_scans={spec!r} asks for {n} labeled scans but the training set has "
            f"only {n_train} scans"
        )
    return n


def read_id_file(path: str | Path, key: str) -> list[str]:
    """Ids listed one a line (blank lines and ``#`` comments ignored).

    Raises:
        DataError: missing or unreadable file, or an id listed twice.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.split.files.{key}: {p}: no such file")
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"data.split.files.{key}: {p}: unreadable: {exc}") from None
    ids = [ln.split("#", 1)[0].strip() for ln in lines]
    ids = [i for i in ids if i]
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"{p}: id {i!r} listed twice")
        seen.add(i)
    return ids


def _default_sizes(n: int) -> tuple[int, int, int]:
    n_val = int(round(0.1 * n))
    n_test = int(round(0.2 * n))
    return n - n_val - n_test, n_val, n_test


def _units(scans: Sequence[tuple[str, str]], unit: str) -> dict[str, list[str]]:
    """Split unit (subject or scan id) -> its sorted scan ids."""
    subject_of = dict(scans)
    unit_scans: dict[str, list[str]] = {}
    for sid in sorted(s for s, _ in scans):
        unit_scans.setdefault(subject_of[sid] if unit == "subject" else sid, []).append(sid)
    return unit_scans


def _sets_from_files(
    files: dict[str, Any], unit_scans: dict[str, list[str]], unit: str, noun: str
) -> dict[str, list[str]]:
    """Units per set read from the list files (train required; ids known; sets disjoint)."""
    if "train" not in files:
        raise DataError("data.split.files: a 'train' list file is required with list files")
    units = sorted(unit_scans)
    sets: dict[str, list[str]] = {}
    for key in _SETS:
        ids = read_id_file(files[key], key) if key in files else []
        for i in ids:
            if i not in unit_scans:
                raise DataError(
                    f"{files[key]}: unknown {unit} id {i!r}{did_you_mean(i, units)} "
                    f"(split unit is {unit!r}; the dataset has {len(units)} {noun})"
                )
        sets[key] = ids
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(sets[a]) & set(sets[b]))
        if both:
            raise DataError(f"data.split.files: {both[:5]} listed in both {a} and {b}")
    return sets


def _seeded_sets(units: list[str], cfg: SplitConfig, noun: str) -> dict[str, list[str]]:
    """Units shuffled by ``split.seed`` and cut by ``split.sizes`` (default 70/10/20 %)."""
    n = len(units)
    sizes = cfg.sizes if cfg.sizes is not None else _default_sizes(n)
    if any(s < 0 for s in sizes):
        raise DataError(f"data.split.sizes={tuple(sizes)}: sizes must be >= 0")
    if sum(sizes) > n:
        raise DataError(
            f"data.split.sizes={tuple(sizes)} needs {sum(sizes)} {noun} but the dataset has "
            f"only {n} {noun} (split unit {cfg.unit!r})"
        )
    order = [units[i] for i in np.random.default_rng(cfg.seed).permutation(n)]
    a, b, c = sizes
    return {"train": order[:a], "val": order[a : a + b], "test": order[a + b : a + b + c]}


def _labeled_order(train: list[str], seed: int, files: dict[str, Any]) -> list[str]:
    """The seeded ordering of the training scans, led by the ``labeled`` list file if any."""
    rng = np.random.default_rng([seed, 1])
    order = [train[i] for i in rng.permutation(len(train))]
    if "labeled" not in files:
        return order
    head = read_id_file(files["labeled"], "labeled")
    for i in head:
        if i not in train:
            raise DataError(
                f"{files['labeled']}: {i!r} is not a training scan"
                f"{did_you_mean(i, train)} (labeled scans must come from the training set)"
            )
    return head + [s for s in order if s not in set(head)]


def make_split(
    scans: Sequence[tuple[str, str]],
    cfg: SplitConfig,
    labeled: int | str,
    dataset: str = "",
) -> dict[str, Any]:
    """Split ``scans`` (``(scan_id, subject)`` pairs) and choose the labeled subset.

    Args:
        scans: every scan of the dataset.
        cfg: unit, seed, sizes or list files.
        labeled: ``data.labeled_scans``, a count or a percentage of the training scans.
        dataset: recorded in the manifest.

    Returns:
        The split manifest: scan ids per set (``train``, ``val``, ``test``, ``unused``),
        subjects per set, ``labeled_order`` (the seeded ordering of the training scans),
        ``labeled`` (its first N), ``unlabeled`` (all training scans), ``fingerprint``.

    Raises:
        DataError: sizes that cannot be made, list files naming unknown ids or overlapping,
            a labeled count larger than the training set.
    """
    unit_scans = _units(scans, cfg.unit)
    units = sorted(unit_scans)
    noun = "subjects" if cfg.unit == "subject" else "scans"
    files = dict(cfg.files or {})
    from_files = any(k in files for k in _SETS)
    if from_files:
        sets = _sets_from_files(files, unit_scans, cfg.unit, noun)
    else:
        sets = _seeded_sets(units, cfg, noun)
    if not sets["train"]:
        raise DataError(
            f"data.split: the training set is empty ({len(units)} {noun}, sizes {cfg.sizes}); "
            "at least one training unit is needed"
        )
    used = set().union(*(set(v) for v in sets.values()))
    scans_of = {k: sorted(s for u in v for s in unit_scans[u]) for k, v in sets.items()}
    train = scans_of["train"]
    labeled_order = _labeled_order(train, cfg.seed, files)
    n_lab = labeled_count(labeled, len(train))
    subject_of = dict(scans)
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "unit": cfg.unit,
        "seed": cfg.seed,
        "source": "files" if from_files else "seeded",
        "files": {k: str(v) for k, v in files.items()},
        "sizes": [len(sets[k]) for k in _SETS],
        "train": train,
        "val": scans_of["val"],
        "test": scans_of["test"],
        "unused": sorted(s for u in units if u not in used for s in unit_scans[u]),
        "subjects": {k: sorted({subject_of[s] for s in scans_of[k]}) for k in _SETS},
        "labeled_spec": labeled,
        "labeled_count": n_lab,
        "labeled_order": labeled_order,
        "labeled": labeled_order[:n_lab],
        "unlabeled": list(train),
    }
    manifest["fingerprint"] = config_hash(
        {k: manifest[k] for k in ("dataset", "unit", "train", "val", "test", "labeled")}
    )
    return manifest


def save_split(manifest: dict[str, Any], path: str | Path) -> Path:
    """Write the split manifest as JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(path)
    return path
