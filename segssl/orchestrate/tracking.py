"""MLflow side of a sweep: one experiment per sweep name, a parent run per invocation, one child
run per trial carrying the DESIGN.md record.

Only :class:`mlflow.MlflowClient` is used (no global fluent state), so trial processes can log
concurrently. Params are the flattened resolved config; metrics are logged in batches.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from segssl.record import (
    KIND_SWEEP,
    KIND_TRIAL,
    ROLE_PARENT,
    ROLE_TRIAL,
    TAG_ATTEMPTS,
    TAG_DATA_FP,
    TAG_END_REASON,
    TAG_GIT_SHA,
    TAG_HEARTBEAT,
    TAG_HOST,
    TAG_KEY,
    TAG_KIND,
    TAG_PARENT_KEY,
    TAG_PARENT_RUN,
    TAG_PID,
    TAG_RETRYABLE,
    TAG_ROLE,
    TAG_SPEC,
    TAG_SPEC_FILE,
    TAG_SPLIT_FP,
    TAG_STAGE,
    TAG_START,
    TAG_SWEEP,
)

__all__ = [
    "TrackingError",
    "TrialRecorder",
    "check_tracking",
    "artifact_location",
    "ensure_experiment",
    "finished_runs",
    "git_sha",
    "live_sweep_runs",
    "mark_stale_runs",
    "redact",
    "redact_logging",
    "resolve_tracking_uri",
    "close_stage_runs",
    "start_sweep_run",
    "touch_sweep_run",
]

_NOLOAD = r"The ``noload`` loader strategy is deprecated"


def _quiet_mlflow_store() -> None:
    """MLflow 3.17's SQLAlchemy store module triggers SQLAlchemy's "noload" deprecation warning
    when first imported; it says nothing to a segssl user. (Re-inserted at the front each time:
    other libraries add catch-all filters after import.)"""
    warnings.filterwarnings("ignore", message=_NOLOAD)


# user info as a URL parser splits it: the password runs to the *last* '@' before the path, the
# user to the first ':' (an unencoded '@' in either must not end the match early and leak the rest)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:]*):(?P<pw>[^/\s]*)@")
_MAX_PARAMS = 100  # MLflow's log_batch limits
_MAX_METRICS = 1000


class TrackingError(RuntimeError):
    """The tracking server is unreachable or the experiment cannot be used."""


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` replaced by ``***``.

    Every message that may contain a tracking URI goes through it before it is printed, logged
    or raised.
    """
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:***@", text)


def redact_logging() -> None:
    """Redact passwords in URIs from every log record of this process from now on (MLflow and
    its HTTP stack may log a request URL); idempotent."""
    import logging

    old = logging.getLogRecordFactory()
    if getattr(old, "_segssl_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = old(*args, **kwargs)
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's to report
            return record
        if "@" in text and "://" in text:
            record.msg, record.args = redact(text), None
        return record

    factory._segssl_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without ``user:password@`` and the Basic-auth header those credentials make."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    plain = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    return plain, {"Authorization": "Basic " + base64.b64encode(token).decode()}


def resolve_tracking_uri(cli_uri: str | None, sweep_dir: str | Path) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else SQLite in the sweep directory."""
    if cli_uri:
        return cli_uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    path = Path(sweep_dir).resolve() / "mlflow.db"
    return f"sqlite:///{path}"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (``timeout`` seconds) when the tracking server cannot be reached.

    HTTP(S) servers are asked for ``/health``; a SQLite URI needs a writable directory; a
    plain file store is refused by MLflow 3 and therefore here, with a hint.

    Raises:
        TrackingError: with the URI and the reason.
    """
    if uri.startswith(("http://", "https://")):
        shown = redact(uri)
        base, headers = _split_credentials(uri.rstrip("/"))
        req = urllib.request.Request(base + "/health", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
                if resp.status >= 400:
                    raise TrackingError(f"tracking server {shown} answered HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            raise TrackingError(
                f"tracking server {shown} answered HTTP {exc.code} ({exc.reason}) to /health"
                + ("; check the user name and password" if exc.code in (401, 403) else "")
            ) from None
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            reason = redact(str(getattr(exc, "reason", exc)))
            raise TrackingError(
                f"tracking server {shown} cannot be reached within {timeout:g} s ({reason}); "
                "start it (`mlflow server ...`) or pass another --tracking-uri"
            ) from None
        return
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if db.exists():
            if not os.access(db, os.W_OK):
                raise TrackingError(f"tracking URI {uri}: {db} is not writable")  # no password
            return
        existing = db.parent  # the directory is created later; its nearest ancestor must be
        while not existing.exists():  # writable (checked without creating anything)
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise TrackingError(
                f"tracking URI {uri}: cannot create {db.parent} ({existing} is "
                "not a writable directory)"
            )
        return
    if uri.startswith(("file:", "/", ".")) or "://" not in uri:
        raise TrackingError(
            f"tracking URI {redact(uri)!r}: MLflow 3 no longer writes the plain file store; use "
            "sqlite:///path/to/mlflow.db or an http(s):// tracking server"
        )


_READY: set[str] = set()


def _client(uri: str) -> Any:
    """An ``MlflowClient``; a SQLite store is created (migrated) under a file lock first.

    MLflow migrates a new SQLite database on first use; two processes doing so at once make the
    second fail (``Online migration expected to match one row``). The first use of a store in a
    process therefore holds ``<db>.lock`` while MLflow creates or checks the schema.
    """
    from mlflow import MlflowClient

    _quiet_mlflow_store()
    client = MlflowClient(tracking_uri=uri)
    if uri.startswith("sqlite:///") and uri not in _READY:
        import fcntl

        db = Path(uri[len("sqlite:///") :])
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                client.search_experiments(max_results=1)
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        _READY.add(uri)
    return client


def git_sha() -> str:
    """The git commit of the segssl checkout, with ``-dirty`` when modified; ``unknown`` if none."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: ``artifacts/<name>`` beside
    the database, so a sweep's files stay in its storage. (MLflow's default, ``./mlruns/<id>``
    in the current directory, put every sweep run from one folder into the same ``mlruns/1``.)
    None for a tracking server, whose own artifact root applies."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    return str(Path(uri[len("sqlite:///") :]).resolve().parent / "artifacts" / folder)


def ensure_experiment(uri: str, name: str, spec_hash: str, extend: bool = False) -> str:
    """Get or create the experiment ``name``; refuse one made by a different spec.

    Args:
        uri: tracking URI.
        name: the sweep name.
        spec_hash: :func:`segssl.orchestrate.spec.spec_hash` of this spec.
        extend: accept an experiment of a different spec and record the new hash.

    Returns:
        The experiment id.

    Raises:
        TrackingError: the experiment exists with another spec hash (and not ``extend``), or it
            is deleted.
    """
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(
            name,
            artifact_location=artifact_location(uri, name),
            tags={TAG_SPEC: spec_hash, TAG_SWEEP: name},
        )
        return str(exp_id)
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(
            f"MLflow experiment {name!r} is deleted at {uri}; restore it or rename the sweep"
        )
    old = exp.tags.get(TAG_SPEC)
    if old is None and exp.tags.get(TAG_SWEEP) is None and not extend:
        raise TrackingError(
            f"MLflow experiment {name!r} at {uri} was not created by a segssl sweep; rename the "
            "sweep or pass --extend to log into it anyway"
        )
    if old not in (None, spec_hash) and not extend:
        raise TrackingError(
            f"sweep name {name!r} is already used at {uri} by a different spec (spec hash "
            f"{old}, this spec {spec_hash}: its base/stage configs or swept keys differ); "
            "rename the sweep, or pass --extend to add this spec's trials to it"
        )
    if old != spec_hash:
        client.set_experiment_tag(exp.experiment_id, TAG_SPEC, spec_hash)
    return str(exp.experiment_id)


def _search(client: Any, exp_id: str, filter_string: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_runs(uri: str, exp_id: str) -> dict[str, Any]:
    """FINISHED trial runs of the experiment by trial key (the earliest one if several)."""
    client = _client(uri)
    runs = _search(
        client, exp_id, f"attributes.status = 'FINISHED' and tags.`{TAG_KIND}` = '{KIND_TRIAL}'"
    )
    out: dict[str, Any] = {}
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):
        key = r.data.tags.get(TAG_KEY)
        if key and key not in out:
            out[key] = r
    return out


def _driver_alive(run: Any) -> bool:
    """The sweep run's driver is alive: heartbeat within the lease and, on this host, the same
    process (pid and start time) still running (see :func:`segssl.orchestrate.claim.owner_alive`).
    """
    from segssl.orchestrate.claim import owner_alive

    tags = run.data.tags
    try:
        beat = float(tags.get(TAG_HEARTBEAT, "0") or 0)
    except ValueError:
        beat = 0.0
    return owner_alive(tags.get(TAG_HOST), tags.get(TAG_PID), tags.get(TAG_START), beat)


def mark_stale_runs(uri: str, exp_id: str, everyone: bool = False) -> int:
    """Mark RUNNING runs of a dead sweep driver as KILLED; return how many were marked.

    A sweep run is stale when its heartbeat is older than the lease, or its driver process is
    gone or replaced by another with the same pid (same host). Trial runs are stale when their
    sweep run is stale or missing. Runs of a live driver (a sweep running elsewhere right now)
    are left alone unless ``everyone`` (``--takeover``: the operator knows it is gone).
    """
    client = _client(uri)
    running = _search(client, exp_id, "attributes.status = 'RUNNING'")
    sweeps = {r.info.run_id: r for r in running if r.data.tags.get(TAG_KIND) == KIND_SWEEP}
    alive = set() if everyone else {rid for rid, r in sweeps.items() if _driver_alive(r)}
    n = 0
    for r in running:
        kind = r.data.tags.get(TAG_KIND)
        if kind == KIND_SWEEP:
            stale = r.info.run_id not in alive
        else:
            stale = r.data.tags.get(TAG_PARENT_RUN) not in alive
        if stale:
            reason = "taken over (--takeover)" if everyone else "driver gone; marked at restart"
            client.set_tag(r.info.run_id, TAG_END_REASON, reason)
            client.set_terminated(r.info.run_id, status="KILLED")
            n += 1
    return n


def close_stage_runs(
    uri: str, exp_id: str, sweep_run_id: str | None, stage: str, interrupted: str | None = None
) -> dict[str, set[str]]:
    """After a stage's Tuner returned: end its trial runs still RUNNING as KILLED, and count the
    stage's runs of this sweep invocation by status.

    Runs still RUNNING belong to trials Ray stopped from outside (an early stop by ASHA, an actor
    that died); none can still be running once the stage is over. When the sweep was
    ``interrupted`` (the reason, e.g. "sweep stopped by SIGINT"), that is the reason of every
    run it stopped. Returns the trial keys of the stage's runs of this invocation by status.
    """
    client = _client(uri)
    base = f"tags.`{TAG_PARENT_RUN}` = '{sweep_run_id}' and tags.`{TAG_STAGE}` = '{stage}'"
    reason = interrupted or "stopped by Ray Tune (early stop)"
    for r in _search(client, exp_id, base):
        # a trial Tune stopped ends its run KILLED without a reason (it cannot know why) and may
        # do so before or after this: the reason is written here, never by the trial
        unexplained = r.info.status == "KILLED" and (
            interrupted or not r.data.tags.get(TAG_END_REASON)
        )
        if r.info.status != "RUNNING" and not unexplained:
            continue
        client.set_tag(r.info.run_id, TAG_END_REASON, reason)
        if r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, status="KILLED")
    keys: dict[str, set[str]] = {}
    for r in _search(client, exp_id, base):
        keys.setdefault(r.info.status, set()).add(r.data.tags.get(TAG_KEY, r.info.run_id))
    return keys


def failure_reasons(uri: str, exp_id: str, sweep_run_id: str) -> dict[str, dict[str, Any]]:
    """FAILED trial runs of one sweep invocation grouped by their end reason.

    Returns:
        ``{reason: {"retryable": bool, "runs": [run names]}}``; a reason is non-retryable when
        the trial said so (bad config or data, incompatible checkpoint, a full disk...).
    """
    client = _client(uri)
    runs = _search(
        client,
        exp_id,
        f"attributes.status = 'FAILED' and tags.`{TAG_PARENT_RUN}` = '{sweep_run_id}'",
    )
    out: dict[str, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r.info.run_name or ""):
        tags = r.data.tags
        reason = redact(tags.get(TAG_END_REASON) or "no reason recorded").strip()
        entry = out.setdefault(reason, {"retryable": True, "runs": []})
        entry["retryable"] = entry["retryable"] and tags.get(TAG_RETRYABLE) != "false"
        entry["runs"].append(r.info.run_name or r.info.run_id)
    return out


def live_sweep_runs(uri: str, exp_id: str) -> list[Any]:
    """RUNNING sweep runs of the experiment whose driver is alive (see :func:`mark_stale_runs`)."""
    client = _client(uri)
    running = _search(
        client, exp_id, f"attributes.status = 'RUNNING' and tags.`{TAG_KIND}` = '{KIND_SWEEP}'"
    )
    return [r for r in running if _driver_alive(r)]


def start_sweep_run(uri: str, exp_id: str, name: str, spec_hash: str, source: str) -> str:
    """Create the parent run of this sweep invocation; return its id."""
    from segssl.orchestrate.claim import process_start

    client = _client(uri)
    run = client.create_run(
        exp_id,
        run_name=f"sweep {time.strftime('%m-%d %H:%M')}",  # short: the UI cuts long names
        tags={
            TAG_KIND: KIND_SWEEP,
            TAG_ROLE: ROLE_PARENT,
            TAG_SWEEP: name,
            TAG_SPEC: spec_hash,
            TAG_HOST: socket.gethostname(),
            TAG_PID: str(os.getpid()),
            TAG_START: process_start(os.getpid()) or "",
            TAG_HEARTBEAT: f"{time.time():.0f}",
            TAG_GIT_SHA: git_sha(),
            TAG_SPEC_FILE: source,
        },
    )
    return str(run.info.run_id)


def touch_sweep_run(uri: str, run_id: str) -> None:
    """Refresh the heartbeat of the sweep run (a driver elsewhere can then tell it is alive)."""
    _client(uri).set_tag(run_id, TAG_HEARTBEAT, f"{time.time():.0f}")


def _param_str(v: Any) -> str:
    if isinstance(v, list | tuple | dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _metric_items(metrics: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        yield k, float(v)  # NaN (e.g. HD95 of an empty prediction) is kept: MLflow stores it


class TrialRecorder:
    """Writes one trial's MLflow run from inside the trial process.

    A retried attempt of the same trial in the same experiment reopens the run of the earlier
    attempt (its id is kept in the trial's workdir) so that learning curves stay whole; the tag
    ``segssl.attempts`` counts the attempts. A metric is logged at most once per step: a step the
    run already holds for that metric (an earlier attempt's) is not logged again, so a resumed
    attempt may replay the epochs of its checkpoint (:meth:`replay`) and only the missing ones
    are added. It is also the engine's report (``recorder(metrics, step)``, ``recorder.replay``).
    """

    def __init__(self, uri: str, exp_id: str, sweep_run_id: str | None, workdir: Path) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self._Metric, self._Param, self._RunTag = Metric, Param, RunTag
        self.uri = uri
        self.exp_id = exp_id
        self.sweep_run_id = sweep_run_id
        self.workdir = workdir
        self.client = _client(uri)
        self.run_id: str | None = None
        self._steps: dict[str, set[int]] = {}  # the steps logged per metric (loaded on first use)
        self._held: frozenset[str] = frozenset()  # the metrics a reopened run held when reopened

    def _id_file(self) -> Path:
        return self.workdir / "mlflow" / f"{self.exp_id}.run_id"

    def start(
        self,
        name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
        *,
        reopen: bool = True,
    ) -> str:
        """Create (or reopen after a retry) the trial's run; log tags and params.

        ``reopen=False`` always creates a new run (a run trained again from scratch: the earlier
        run's curves belong to the discarded training).
        """
        idf = self._id_file()
        previous = idf.read_text().strip() if idf.is_file() and reopen else None
        run = None
        if previous:
            try:
                run = self.client.get_run(previous)
            except Exception:  # noqa: BLE001 - a run of a deleted/other store
                run = None
            if run is not None and (
                run.info.status == "FINISHED" or run.info.lifecycle_stage == "deleted"
            ):
                run = None
        attempts = 1
        all_tags = dict(tags)
        if self.sweep_run_id:
            all_tags[TAG_PARENT_RUN] = self.sweep_run_id
        all_tags[TAG_KIND] = KIND_TRIAL
        all_tags[TAG_ROLE] = ROLE_TRIAL
        if run is None:
            run = self.client.create_run(self.exp_id, run_name=name, tags=all_tags)
            self.run_id = str(run.info.run_id)
            # kept at once: an attempt killed while logging the params (100 a batch) is reopened
            # by the next, which logs the rest, rather than leaving a run behind without them
            idf.parent.mkdir(parents=True, exist_ok=True)
            idf.write_text(self.run_id)
            self._log(params=params)
        else:
            self.run_id, self._held = str(run.info.run_id), frozenset(run.data.metrics)
            attempts = int(run.data.tags.get(TAG_ATTEMPTS, "1")) + 1
            self.client.update_run(self.run_id, status="RUNNING")
            if TAG_END_REASON in run.data.tags:  # why the earlier attempt ended: no longer true
                self.client.delete_tag(self.run_id, TAG_END_REASON)
            lacking = {k: v for k, v in params.items() if k not in run.data.params}
            self._log(tags=all_tags, params=lacking)
        self._log(tags={TAG_ATTEMPTS: str(attempts)})  # the id file already names this run
        return self.run_id

    def _log(
        self,
        metrics: Mapping[str, Any] | None = None,
        step: int = 0,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        assert self.run_id is not None
        now = int(time.time() * 1000)
        ms = [self._Metric(k, v, now, step) for k, v in _metric_items(metrics or {})]
        ps = [self._Param(k, _param_str(v)[:6000]) for k, v in (params or {}).items()]
        ts = [self._RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while ms or ps or ts:  # MLflow: <= 1000 metrics, 100 params, 100 tags per batch
            bp, ps = ps[:_MAX_PARAMS], ps[_MAX_PARAMS:]
            bt, ts = ts[:_MAX_PARAMS], ts[_MAX_PARAMS:]
            room = _MAX_METRICS - len(bp) - len(bt)
            bm, ms = ms[:room], ms[room:]
            self.client.log_batch(self.run_id, metrics=bm, params=bp, tags=bt)

    def _logged_steps(self, key: str) -> set[int]:
        """The steps at which the run holds metric ``key``: read from MLflow once, for a metric
        the reopened run held (one request each; a final report's per-class and per-scan metrics
        a killed attempt never logged cost none); a new run starts with none."""
        if key not in self._steps:
            assert self.run_id is not None
            history = self.client.get_metric_history(self.run_id, key) if key in self._held else []
            self._steps[key] = {int(m.step) for m in history}
        return self._steps[key]

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> dict[str, float]:
        """Log one report of the engine (one batch): the metrics the run does not yet hold at
        ``step``; returns those logged."""
        new = {k: v for k, v in _metric_items(metrics) if step not in self._logged_steps(k)}
        if new:
            self._log(metrics=new, step=step)
            for k in new:
                self._steps[k].add(step)
        return new

    def __call__(self, metrics: Mapping[str, Any], step: int) -> None:
        """The engine's ``report``."""
        self.log_metrics(metrics, step)

    def replay(self, metrics: Mapping[str, Any], step: int) -> None:
        """The engine's ``report.replay`` (an epoch of a resumed checkpoint): log what the run
        lacks of it, as :meth:`log_metrics` does."""
        self.log_metrics(metrics, step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run."""
        self._log(tags=tags)

    def log_outputs(
        self, workdir: Path, log_checkpoint: bool, split_path: str | None = None
    ) -> None:
        """Log the trial's files: resolved config, result.json, split manifest, pictures and,
        when asked, the best checkpoint."""
        assert self.run_id is not None
        for fname in ("config.yaml", "result.json", "split.json"):
            f = workdir / fname
            if f.is_file():
                self.client.log_artifact(self.run_id, str(f))
        if split_path and Path(split_path).is_file() and not (workdir / "split.json").is_file():
            self.client.log_artifact(self.run_id, split_path, artifact_path="split")
        pics = workdir / "pictures"
        if pics.is_dir() and any(pics.iterdir()):
            self.client.log_artifacts(self.run_id, str(pics), artifact_path="pictures")
        best = workdir / "checkpoints" / "best.pt"
        if log_checkpoint and best.is_file():
            self.client.log_artifact(self.run_id, str(best), artifact_path="checkpoints")

    def end(self, status: str, reason: str | None = None, *, keep_reason: bool = False) -> None:
        """Terminate the run with ``status`` (FINISHED, FAILED or KILLED).

        ``keep_reason``: leave an end reason the run already carries (the driver's, e.g. "sweep
        stopped by SIGINT", which can be written before the stopped trial's own process gets
        here); a reopened run starts without one, so any reason present is this attempt's.
        """
        if self.run_id is None:
            return
        if reason and keep_reason:
            tags = self.client.get_run(self.run_id).data.tags
            reason = None if tags.get(TAG_END_REASON) else reason
        if reason:
            self._log(tags={TAG_END_REASON: reason[:5000]})
        self.client.set_terminated(self.run_id, status=status)


def fingerprint_tags(workdir: Path, result: Mapping[str, Any]) -> dict[str, str]:
    """``segssl.data_fingerprint`` / ``segssl.split_fingerprint`` tags of a finished run, from its
    result dict and the ``result.json`` / ``split.json`` in its workdir."""
    tags: dict[str, str] = {}
    sources: list[Mapping[str, Any]] = [result]
    for fname in ("result.json", "split.json"):
        f = workdir / fname
        if f.is_file():
            try:
                data = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(data, Mapping):
                sources.append(data)
                if fname == "split.json" and "fingerprint" in data:
                    tags.setdefault(TAG_SPLIT_FP, str(data["fingerprint"]))
    for src in sources:
        for name, tag in (("data_fingerprint", TAG_DATA_FP), ("split_fingerprint", TAG_SPLIT_FP)):
            if src.get(name):
                tags.setdefault(tag, str(src[name]))
    return tags


def start_single_run(
    uri: str, experiment: str, cfg: Any, name: str, workdir: Path, *, reopen: bool = True
) -> TrialRecorder:
    """The MLflow run of one ``segssl train`` (no sweep), with the same record as a sweep trial.

    Tags ``segssl.stage``, ``segssl.trial_key`` (the key a sweep would give this config as a
    root trial), ``segssl.git_sha`` and, when ``train.init_from`` is a segssl checkpoint,
    ``segssl.parent_key`` (the root-trial key of the config stored in that checkpoint); params are
    the flattened resolved config. The run of an earlier unfinished ``segssl train`` in
    ``workdir`` is reopened unless ``reopen`` is False (``--no-resume``: a new run). The caller
    passes the recorder to ``engine.train`` as its report and closes with
    :func:`finish_single_run`.

    Raises:
        TrackingError: the tracking server cannot be reached.
    """
    from segssl.config import flatten, parse_run_config
    from segssl.orchestrate.plan import trial_key

    check_tracking(uri)
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(experiment, artifact_location(uri, experiment))
    )
    tags = {
        TAG_STAGE: cfg.stage,
        TAG_KEY: trial_key(cfg, None),
        TAG_GIT_SHA: git_sha(),
    }
    if cfg.train.init_from:
        from segssl.engine import load_checkpoint

        stored = load_checkpoint(cfg.train.init_from).get("config")
        if isinstance(stored, str):
            parent_cfg = parse_run_config(json.loads(stored), source=cfg.train.init_from)
            tags[TAG_PARENT_KEY] = trial_key(parent_cfg, None)
    recorder = TrialRecorder(uri, exp_id, None, Path(workdir))
    recorder.start(name, tags, flatten(cfg), reopen=reopen)
    return recorder


def finish_single_run(
    recorder: TrialRecorder,
    workdir: Path,
    result: Mapping[str, Any] | None,
    status: str,
    reason: str | None = None,
) -> None:
    """Fingerprint tags and artifacts of a finished ``segssl train`` run, then its status (and
    why it ended, for a FAILED or KILLED run)."""
    if result:
        recorder.set_tags(fingerprint_tags(Path(workdir), result))
        recorder.log_outputs(
            Path(workdir), log_checkpoint=False, split_path=result.get("split_path")
        )
    recorder.end(status, reason)
