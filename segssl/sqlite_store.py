"""Read-only bulk reads of an MLflow SQLite tracking store, without importing MLflow.

``segssl table`` and ``segssl sweep --dry-run`` only read: every run of one experiment with its
params, tags and latest metrics. Through :class:`mlflow.MlflowClient` that costs several seconds
of imports (MLflow, SQLAlchemy, alembic) and one paged search per call; here it is four SQL
queries on MLflow's own tables (``runs``, ``params``, ``tags``, ``latest_metrics``), opened
read-only. Anything else (``http://`` servers, a store whose tables do not look like MLflow's)
returns ``None`` and the caller goes through MLflow as before.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from segssl.record import KIND_TRIAL, TAG_KEY, TAG_KIND

__all__ = ["StoredRun", "read_runs", "sqlite_path"]

_RUN_COLS = "r.run_uuid, r.name, r.status, r.start_time, r.end_time, r.artifact_uri"


@dataclass
class StoredRun:
    """One run as the store holds it (metrics: the latest value of each key)."""

    run_id: str
    name: str | None
    status: str
    start_time: int | None
    end_time: int | None
    artifact_uri: str | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI, else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    return None


def _connect(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    con.execute("PRAGMA query_only = 1")
    return con


def read_runs(
    uri: str, experiment: str, statuses: Iterable[str] | None = None
) -> list[StoredRun] | None:
    """Every active run of ``experiment`` in a SQLite store, oldest first.

    Args:
        uri: the tracking URI; anything but an existing ``sqlite:///`` file returns None.
        experiment: the experiment's name.
        statuses: keep only runs with one of these statuses (default: all).

    Returns:
        The runs, or None when the store cannot be read this way (the caller then asks MLflow).

    Raises:
        LookupError: the store has no active experiment named ``experiment``.
    """
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return None
    where = "e.name = ? AND r.lifecycle_stage = 'active'"
    args: list[str] = [experiment]
    wanted = list(statuses or [])
    if wanted:
        where += f" AND r.status IN ({', '.join('?' * len(wanted))})"
        args += wanted
    sub = f"SELECT r.run_uuid FROM runs r JOIN experiments e USING (experiment_id) WHERE {where}"
    try:
        con = _connect(db)
    except sqlite3.Error:
        return None
    try:
        exp = con.execute(
            "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'",
            [experiment],
        ).fetchone()
        if exp is None:
            raise LookupError(experiment)
        rows = con.execute(
            f"SELECT {_RUN_COLS} FROM runs r JOIN experiments e USING (experiment_id) "
            f"WHERE {where} ORDER BY r.start_time, r.run_uuid",
            args,
        ).fetchall()
        runs = {row[0]: StoredRun(*row) for row in rows}
        if runs:
            for table, target in (("params", "params"), ("tags", "tags")):
                q = f"SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({sub})"
                for rid, key, value in con.execute(q, args):
                    getattr(runs[rid], target)[key] = value
            q = f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({sub})"
            for rid, key, value, is_nan in con.execute(q, args):
                runs[rid].metrics[key] = math.nan if is_nan else float(value)
    except (sqlite3.Error, KeyError):
        return None  # not MLflow's schema (or a newer one): let MLflow read it
    finally:
        con.close()
    return list(runs.values())


def read_experiment(uri: str, experiment: str) -> tuple[str, dict[str, str]] | None:
    """(id, tags) of the active experiment ``experiment`` in a SQLite store.

    Returns:
        None when the store cannot be read this way (not SQLite, not MLflow's schema).

    Raises:
        LookupError: the store has no active experiment of that name.
    """
    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return None
    try:
        con = _connect(db)
        try:
            row = con.execute(
                "SELECT experiment_id FROM experiments WHERE name = ? "
                "AND lifecycle_stage = 'active'",
                [experiment],
            ).fetchone()
            if row is None:
                raise LookupError(experiment)
            tags = dict(
                con.execute(
                    "SELECT key, value FROM experiment_tags WHERE experiment_id = ?", [row[0]]
                ).fetchall()
            )
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return str(row[0]), tags


def finished_trials(uri: str, experiment: str) -> dict[str, StoredRun] | None:
    """FINISHED trial runs by trial key (the earliest run of a key), as
    :func:`segssl.orchestrate.tracking.finished_runs` gives them; None as :func:`read_runs`."""
    runs = read_runs(uri, experiment, statuses=["FINISHED"])
    if runs is None:
        return None
    out: dict[str, StoredRun] = {}
    for r in sorted(runs, key=lambda r: r.start_time or 0):
        key = r.tags.get(TAG_KEY)
        if key and r.tags.get(TAG_KIND) == KIND_TRIAL and key not in out:
            out[key] = r
    return out
