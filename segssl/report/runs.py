"""MLflow runs of a sweep as a pandas DataFrame, and matching of params against table filters.

The DataFrame has one row per FINISHED child run with the columns ``run_id``, ``status``,
``start_time``, ``end_time``, ``params.<key>`` (strings, as MLflow stores them),
``metrics.<key>`` (the last logged value, floats) and ``tags.<key>`` -- the layout of
``mlflow.search_runs`` -- so that a table can be built and tested without a tracking server.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from segssl.record import KIND_SWEEP, ROLE_PARENT
from segssl.record import TAG_KEY as KEY_TAG
from segssl.record import TAG_KIND as KIND_TAG
from segssl.record import TAG_PARENT_RUN as PARENT_TAG
from segssl.record import TAG_ROLE as ROLE_TAG
from segssl.record import TAG_STAGE as STAGE_TAG  # noqa: F401 - used by the report
from segssl.report.errors import ReportError


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def get_experiment_id(tracking_uri: str, experiment: str) -> str:
    """Id of the MLflow experiment named ``experiment``.

    Raises:
        ReportError: when the tracking store has no experiment of that name.
    """
    try:
        exp = _client(tracking_uri).get_experiment_by_name(experiment)
    except Exception as exc:  # noqa: BLE001 - any store error becomes a named report error
        raise ReportError(f"cannot read MLflow tracking store {tracking_uri!r}: {exc}") from exc
    if exp is None:
        raise _no_experiment(tracking_uri, experiment)
    return str(exp.experiment_id)


def load_runs(tracking_uri: str, experiment: str, page_size: int = 1000) -> pd.DataFrame:
    """Every FINISHED child run of ``experiment`` as a DataFrame (see the module docstring).

    Parent runs (tag ``segssl.role=parent`` or ``segssl.kind=sweep``, or no
    ``mlflow.parentRunId`` tag) and runs that
    are RUNNING, FAILED, KILLED or SCHEDULED are left out. When a trial key has several
    FINISHED runs (which idempotent sweeps avoid), the latest one is kept.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///...``, ``http://...``, a directory).
        experiment: experiment name (the sweep's ``name``).
        page_size: runs per ``search_runs`` page.

    Returns:
        One row per run, sorted by start time.
    """
    records = [
        _record(run_id, status, start, end, params, metrics, tags)
        for run_id, status, start, end, params, metrics, tags in _finished(
            tracking_uri, experiment, page_size
        )
        if PARENT_TAG in tags
        and tags.get(ROLE_TAG) != ROLE_PARENT
        and tags.get(KIND_TAG) != KIND_SWEEP
    ]
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "status", "start_time", "end_time"])
    df = df.sort_values("start_time", kind="stable").reset_index(drop=True)
    key_col = f"tags.{KEY_TAG}"
    if key_col in df:
        has_key = df[key_col].notna()
        keyed = df[has_key].drop_duplicates(subset=[key_col], keep="last")
        df = pd.concat([keyed, df[~has_key]]).sort_values("start_time", kind="stable")
        df = df.reset_index(drop=True)
    return df


def _record(
    run_id: str,
    status: str,
    start: int | None,
    end: int | None,
    params: dict[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "run_id": run_id,
        "status": status,
        "start_time": start,
        "end_time": end,
    }
    rec.update({f"params.{k}": v for k, v in params.items()})
    rec.update({f"metrics.{k}": float(v) for k, v in metrics.items()})
    rec.update({f"tags.{k}": v for k, v in tags.items()})
    return rec


def _no_experiment(tracking_uri: str, experiment: str) -> ReportError:
    return ReportError(
        f"no MLflow experiment named {experiment!r} at {tracking_uri!r}: has the sweep "
        "run yet (segssl sweep SWEEP.yaml), and is this the right --tracking-uri?"
    )


def _finished(tracking_uri: str, experiment: str, page_size: int) -> Iterable[tuple]:
    """(run_id, status, start, end, params, metrics, tags) of every FINISHED run: one bulk read
    of a SQLite store (no MLflow import), else paged ``search_runs`` through MLflow."""
    from segssl.sqlite_store import read_runs

    try:
        stored = read_runs(tracking_uri, experiment, statuses=["FINISHED"])
    except LookupError:
        raise _no_experiment(tracking_uri, experiment) from None
    if stored is not None:
        for r in stored:
            yield r.run_id, r.status, r.start_time, r.end_time, r.params, r.metrics, r.tags
        return
    from mlflow.entities import ViewType

    client = _client(tracking_uri)
    exp_id = get_experiment_id(tracking_uri, experiment)
    token: str | None = None
    while True:
        page = client.search_runs(
            [exp_id],
            filter_string="attributes.status = 'FINISHED'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=page_size,
            page_token=token,
        )
        for run in page:
            if run.info.status != "FINISHED":
                continue
            i, d = run.info, run.data
            yield i.run_id, i.status, i.start_time, i.end_time, d.params, d.metrics, d.tags
        token = page.token
        if not token:
            break


def load_history(tracking_uri: str, run_ids: Iterable[str], key: str) -> pd.DataFrame:
    """The full history of metric ``key`` for each run: columns ``run_id``, ``step``, ``value``.

    When a step was logged twice (a resumed trial), the last value wins.
    """
    client = _client(tracking_uri)
    rows: list[dict[str, Any]] = []
    for run_id in dict.fromkeys(run_ids):
        for m in client.get_metric_history(run_id, key):
            rows.append(
                {"run_id": run_id, "step": int(m.step), "value": float(m.value), "ts": m.timestamp}
            )
    hist = pd.DataFrame(rows, columns=["run_id", "step", "value", "ts"])
    if hist.empty:
        return hist.drop(columns="ts")
    hist = hist.sort_values(["run_id", "step", "ts"], kind="stable")
    hist = hist.drop_duplicates(subset=["run_id", "step"], keep="last")
    return hist.drop(columns="ts").reset_index(drop=True)


def latest_parent_run(tracking_uri: str, experiment: str) -> str | None:
    """Run id of the sweep's latest parent run (tag ``segssl.role=parent`` or
    ``segssl.kind=sweep``), if there is one."""
    found = [(start or 0, rid) for rid, start, _ in parent_runs(tracking_uri, experiment)]
    return max(found)[1] if found else None


def parent_runs(tracking_uri: str, experiment: str) -> list[tuple[str, int | None, str | None]]:
    """(run id, start time, artifact URI) of every parent run of the sweep (any status)."""
    from segssl.sqlite_store import read_runs

    try:
        stored = read_runs(tracking_uri, experiment)
    except LookupError:
        raise _no_experiment(tracking_uri, experiment) from None
    if stored is not None:
        return [
            (r.run_id, r.start_time, r.artifact_uri)
            for r in stored
            if r.tags.get(ROLE_TAG) == ROLE_PARENT or r.tags.get(KIND_TAG) == KIND_SWEEP
        ]
    client = _client(tracking_uri)
    exp_id = get_experiment_id(tracking_uri, experiment)
    found = []
    for tag, value in ((ROLE_TAG, ROLE_PARENT), (KIND_TAG, KIND_SWEEP)):
        found += client.search_runs(
            [exp_id],
            filter_string=f"tags.`{tag}` = '{value}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return [(r.info.run_id, r.info.start_time, r.info.artifact_uri) for r in found]


# ----------------------------------------------------------------------------- value matching
def _as_number(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return float(v)
    try:
        x = float(str(v).strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def norm_value(v: Any) -> str:
    """Canonical text of a param value: ``"1.0"`` -> ``"1"``, ``"0.50"`` -> ``"0.5"``,
    ``True``/``"True"`` -> ``"true"``, ``None`` -> ``"None"``; other strings unchanged."""
    if v is None:
        return "None"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v.strip() in ("True", "False", "true", "false"):
        return v.strip().lower()
    x = _as_number(v)
    if x is not None:
        return str(int(x)) if x.is_integer() and abs(x) < 2**53 else repr(x)
    return str(v)


def value_matches(param: Any, want: Any) -> bool:
    """Whether a logged param (a string, or NaN when the run lacks it) equals a filter value.

    A list ``want`` means any of its values. Numbers compare numerically, booleans and None by
    their canonical text, everything else as strings.
    """
    if isinstance(want, list | tuple):
        return any(value_matches(param, w) for w in want)
    if param is None or (isinstance(param, float) and math.isnan(param)):
        return want is None
    a, b = _as_number(param), _as_number(want)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return norm_value(param) == norm_value(want)


def filter_mask(df: pd.DataFrame, flt: dict[str, Any]) -> pd.Series:
    """Boolean mask of the runs whose params satisfy every ``key: value`` of ``flt``."""
    mask = pd.Series(True, index=df.index)
    for key, want in flt.items():
        col = f"params.{key}"
        if col not in df:
            return pd.Series(False, index=df.index)
        mask &= df[col].map(lambda p, w=want: value_matches(p, w)).astype(bool)
    return mask


def sorted_values(values: Sequence[Any]) -> list[Any]:
    """Distinct values (by canonical text), numerically sorted when all are numbers."""
    uniq: dict[str, Any] = {}
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        uniq.setdefault(norm_value(v), v)
    nums = {k: _as_number(v) for k, v in uniq.items()}
    if all(x is not None for x in nums.values()):
        return [uniq[k] for k in sorted(uniq, key=lambda k: nums[k])]
    return [uniq[k] for k in sorted(uniq)]


def param_keys(df: pd.DataFrame) -> list[str]:
    """The param keys present in a runs DataFrame."""
    return sorted(c[len("params.") :] for c in df.columns if c.startswith("params."))


def metric_keys(df: pd.DataFrame) -> list[str]:
    """The metric keys present in a runs DataFrame (with at least one value)."""
    return sorted(
        c[len("metrics.") :] for c in df.columns if c.startswith("metrics.") and df[c].notna().any()
    )
