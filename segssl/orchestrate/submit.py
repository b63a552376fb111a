"""``segssl submit``: run ``segssl sweep`` as a Ray job on a remote cluster, idempotently.

The sweep YAML is uploaded as the job's working directory and the segssl package travels with it
(``py_modules``), so the cluster runs the submitter's code; the job's driver runs ``segssl sweep
<file> --address auto`` on the head node. Everything a trial reads or writes must be reachable from
every node: the tracking server (an ``http(s)://`` MLflow server, or a SQLite file on a shared
filesystem) and the sweep storage (a directory mounted at the same path on every node, e.g. NFS).
Local-only defaults are refused here, before anything is submitted.

Idempotent submission: the job's submission id is derived from the sweep (its name and spec
hash): ``segssl-<name>-<hash>`` for the first attempt, ``...-a2``, ``...-a3`` for later ones.
Submitting a sweep whose latest attempt is pending or running attaches to it (Ray's job server
refuses a second job with the same id, so two submitters racing get one driver); submitting one
whose latest attempt ended (succeeded, failed, stopped) starts the next attempt, which runs only
the trials without a FINISHED MLflow run. ``--status``, ``--logs [--follow]`` and ``--stop`` act
on the latest attempt; their exit codes are the job's outcome (:data:`EXIT_CODES`).

Credentials: the tracking URI in the job's command line never carries a user or password.
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` / ``MLFLOW_TRACKING_TOKEN`` (from the
submitter's environment, or the user-info part of the URI) reach the job's driver and its trial
workers as the runtime environment's ``env_vars``, where MLflow's client reads them; nothing of
segssl writes them to params, tags, logs or artifacts. Ray keeps a job's runtime environment in
its job table, readable through the job server: protect the dashboard port (Ray token auth,
a firewall or an SSH tunnel), or keep the credentials on the nodes (a Kubernetes Secret, the
SLURM job's environment) and submit with ``--cluster-credentials``.

The job sees the sweep as ``segssl sweep`` run here would: relative data paths resolve against
the directory ``segssl submit`` is run from (``--root``; the data must be at that path on the
cluster too), so trial keys equal those of a local run, and the papers files of the sweep's
``tables:`` are uploaded beside it at the same relative place. The sweep is planned and its
tables checked here first, so a bad trial config or table fails before submission.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segssl.orchestrate.spec import SpecError, SweepSpec, spec_hash
from segssl.record import TAG_SPEC, TAG_SWEEP

__all__ = [
    "EXIT_CODES",
    "SubmitError",
    "Submission",
    "attempt_id",
    "build_entrypoint",
    "check_submit_args",
    "credential_env",
    "follow_logs",
    "job_exit_code",
    "latest_attempt",
    "stop_job",
    "submission_base",
    "submit_sweep",
]

#: ``segssl submit --status/--logs --follow/--stop`` exit codes by the job's status.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3, "PENDING": 4, "RUNNING": 4}
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class SubmitError(ValueError):
    """Submission arguments that cannot work on a remote cluster."""


def check_submit_args(
    spec: SweepSpec, address: str, tracking_uri: str | None, storage: str | None
) -> tuple[str, str]:
    """Validate what a remote sweep needs; return ``(tracking_uri, storage)``.

    Raises:
        SubmitError: address not ``http(s)://HOST:PORT`` (the dashboard / job server), no
            tracking URI reachable from the cluster, or a relative storage path.
    """
    if not address.startswith(("http://", "https://")) or ":" not in address.split("//", 1)[1]:
        raise SubmitError(
            f"--address {address!r}: expected the Ray job server as http://HEAD:8265 "
            "(the dashboard port)"
        )
    if not tracking_uri:
        raise SubmitError(
            "a remote sweep needs --tracking-uri (or MLFLOW_TRACKING_URI) naming a tracking "
            "server the cluster can reach (http://MLFLOW:5000) or a SQLite file on shared storage"
        )
    from segssl.orchestrate.tracking import redact

    shown = redact(tracking_uri)  # a database URI given here may carry its password
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        raise SubmitError(
            f"--tracking-uri {shown}: a SQLite file for a remote sweep must be an absolute "
            "path on storage shared by the cluster (sqlite:////shared/mlflow.db)"
        )
    if not tracking_uri.startswith(("http://", "https://", "sqlite:////")):
        raise SubmitError(
            f"--tracking-uri {shown}: expected http(s)://HOST:PORT or sqlite:////ABS/PATH"
        )
    store = storage or spec.storage
    if not store or not Path(store).is_absolute():
        raise SubmitError(
            "a remote sweep needs an absolute storage path shared by every node (--storage or "
            f"'storage:' in the sweep), got {store!r}"
        )
    return tracking_uri, store


def build_entrypoint(
    sweep_file: str,
    tracking_uri: str,
    storage: str,
    extend: bool = False,
    root: str | None = None,
    profile: str = "paper",
) -> str:
    """The job's shell command: ``segssl sweep`` on the cluster's own Ray instance; ``root`` is
    the directory relative data paths resolve against (``--root``)."""
    args = [
        "segssl",
        "sweep",
        sweep_file,
        "--address",
        "auto",
        "--tracking-uri",
        tracking_uri,
        "--storage",
        storage,
        "--no-live",
    ]
    if extend:
        args.append("--extend")
    if root is not None:
        args += ["--root", root]
    if profile != "paper":
        args += ["--profile", profile]
    return shlex.join(args)


def _stage_job_dir(src: Path, spec: SweepSpec, tmp: Path) -> str:
    """Copy the sweep file and the papers files its tables name into ``tmp`` so that each
    relative ``paper.file`` resolves from the copied sweep's folder as it does from ``src``'s;
    return the sweep's path inside ``tmp``."""
    from segssl.report.papers import resolve_paper_path
    from segssl.report.tables import REPO_ROOT

    files = [t.paper.file for t in spec.tables if t.paper is not None]
    rel = [f for f in files if not Path(f).is_absolute()]
    depth = max((Path(f).parts.count("..") for f in rel), default=0)
    sub = Path(*[f"d{i}" for i in range(depth)]) if depth else Path()
    (tmp / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, tmp / sub / src.name)
    for f in rel:
        found = resolve_paper_path(f, [src.resolve().parent, REPO_ROOT])
        if found.is_file():
            dest = Path(os.path.normpath(tmp / sub / f))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(found, dest)
    return (sub / src.name).as_posix()


def submission_base(spec: SweepSpec) -> str:
    """The submission id of a sweep's first attempt: ``segssl-<name>-<spec hash[:12]>``."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", spec.name).strip("-")[:60] or "sweep"
    return f"segssl-{slug}-{spec_hash(spec)[:12]}"


def attempt_id(base: str, attempt: int) -> str:
    """Submission id of attempt ``attempt`` (1-based) of the sweep whose first id is ``base``."""
    return base if attempt == 1 else f"{base}-a{attempt}"


def _attempt_of(base: str, submission_id: str | None) -> int | None:
    if submission_id == base:
        return 1
    m = re.fullmatch(re.escape(base) + r"-a(\d+)", submission_id or "")
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Submission:
    """The outcome of :func:`submit_sweep`: the job id, its attempt number and whether an
    already pending/running job of the same sweep was attached to instead of submitting."""

    job_id: str
    attempt: int
    attached: bool
    status: str


def latest_attempt(client: Any, base: str) -> tuple[int, Any] | None:
    """``(attempt, JobDetails)`` of the sweep's latest attempt on the cluster, or None."""
    found = [(_attempt_of(base, j.submission_id), j) for j in client.list_jobs()]
    found = [(n, j) for n, j in found if n is not None]
    return max(found, key=lambda nj: nj[0]) if found else None


def _status(job: Any) -> str:
    return str(getattr(job.status, "value", job.status))


def job_exit_code(status: str) -> int:
    """Exit code of a job status (:data:`EXIT_CODES`)."""
    return EXIT_CODES.get(status, 1)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user-info, user, password)`` of an ``http(s)://user:pass@host`` URI."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return (
        clean,
        urllib.parse.unquote(user) or None,
        urllib.parse.unquote(password) if password else None,
    )


def credential_env(uri: str, environ: Mapping[str, str] | None = None) -> tuple[str, dict]:
    """The tracking URI without credentials, and the MLflow credential variables the job needs.

    Credentials come from ``MLFLOW_TRACKING_USERNAME`` / ``..._PASSWORD`` / ``..._TOKEN`` in
    ``environ`` (default: this process's environment), else from the URI's user-info.
    """
    env = os.environ if environ is None else environ
    clean, user, password = split_credentials(uri)
    out = {k: env[k] for k in CREDENTIAL_VARS if env.get(k)}
    if user and "MLFLOW_TRACKING_USERNAME" not in out:
        out["MLFLOW_TRACKING_USERNAME"] = user
    if password and "MLFLOW_TRACKING_PASSWORD" not in out:
        out["MLFLOW_TRACKING_PASSWORD"] = password
    return clean, out


def check_credentials(uri: str, creds: Mapping[str, str], timeout: float = 10.0) -> None:
    """Ask an http(s) tracking server for one experiment with ``creds``; refuse a 401/403 here
    rather than in every trial of the job.

    Raises:
        SubmitError: the server refuses the credentials (or wants some and none were given).
    """
    if not uri.startswith(("http://", "https://")):
        return
    req = urllib.request.Request(
        uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    )
    user, pw = creds.get("MLFLOW_TRACKING_USERNAME"), creds.get("MLFLOW_TRACKING_PASSWORD")
    if user and pw:
        token = base64.b64encode(f"{user}:{pw}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    elif creds.get("MLFLOW_TRACKING_TOKEN"):
        req.add_header("Authorization", f"Bearer {creds['MLFLOW_TRACKING_TOKEN']}")
    try:
        with urllib.request.urlopen(req, timeout=timeout):  # noqa: S310 - http(s) only
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            who = f"user {user!r}" if user else "no credentials"
            raise SubmitError(
                f"tracking server {uri} refused {who} (HTTP {exc.code}); set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account it accepts"
            ) from None
    except (urllib.error.URLError, OSError):
        return  # reachability is check_tracking's job (the job checks again on the cluster)


def _job_client(address: str, client: Any) -> Any:
    if client is not None:
        return client
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def _project_module() -> str:
    import segssl

    return str(Path(segssl.__file__).resolve().parent)


def submit_sweep(
    sweep_path: str | Path,
    spec: SweepSpec,
    address: str,
    tracking_uri: str | None,
    storage: str | None = None,
    extend: bool = False,
    client: Any = None,
    *,
    ship_code: bool = True,
    cluster_credentials: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Submission:
    """Submit the sweep as a Ray job, or attach to its pending/running attempt.

    Args:
        sweep_path: the sweep YAML (uploaded with the job).
        spec: its validated spec.
        address: Ray job server, ``http://HEAD:8265``.
        tracking_uri: tracking URI reachable from the cluster (credentials in it are moved to
            the job's environment).
        storage: shared storage path (default ``spec.storage``).
        extend: pass ``--extend`` to the remote sweep.
        client: a ``JobSubmissionClient`` (tests); created from ``address`` when None.
        ship_code: upload this segssl package with the job (``py_modules``); otherwise the
            cluster's installed segssl runs.
        cluster_credentials: send no credentials; the nodes' environment has them.
        environ: where credentials are read (default ``os.environ``).

    Raises:
        SubmitError: bad arguments or refused credentials (checked before submitting).
        SpecError: a trial config or a table of the sweep is invalid (checked here first).
        ConnectionError: the job server cannot be reached.
    """
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.runner import check_plan_tables

    uri, store = check_submit_args(spec, address, tracking_uri, storage)
    uri, creds = credential_env(uri, environ)
    if cluster_credentials:
        creds = {}
    src = Path(sweep_path)
    if not src.is_file():
        raise SpecError(f"{src}: no such sweep file")
    root = str(Path.cwd().resolve())
    check_plan_tables(plan_sweep(spec, source=str(src), storage=store, root=root))
    if not cluster_credentials:
        check_credentials(uri, creds)
    client = _job_client(address, client)
    base = submission_base(spec)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    where = {"segssl.root": root, "segssl.storage": store, "segssl.tracking_uri": uri}
    latest = latest_attempt(client, base)
    if latest is not None and _status(latest[1]) in ("PENDING", "RUNNING"):
        n, job = latest
        _check_same_file(job, digest, src)
        _check_same_place(job, where)
        return Submission(str(job.submission_id), n, attached=True, status=_status(job))
    attempt = latest[0] + 1 if latest is not None else 1
    sub_id = attempt_id(base, attempt)
    tmp = Path(tempfile.mkdtemp(prefix="segssl-submit-"))
    job_file = _stage_job_dir(src, spec, tmp)
    runtime_env: dict[str, Any] = {
        "working_dir": str(tmp),
        "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **creds},
    }
    if ship_code:
        runtime_env["py_modules"] = [_project_module()]
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    try:
        client.submit_job(
            entrypoint=build_entrypoint(
                job_file, uri, store, extend, root=root, profile=spec.profile
            ),
            submission_id=sub_id,
            runtime_env=runtime_env,
            metadata={
                TAG_SWEEP: spec.name,
                TAG_SPEC: spec_hash(spec),
                "segssl.attempt": str(attempt),
                "segssl.sweep_file_sha": digest,
                **where,
            },
        )
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
        # another submitter won the race for this attempt's id: attach to its job
        job = client.get_job_info(sub_id)
        _check_same_file(job, digest, src)
        _check_same_place(job, where)
        return Submission(sub_id, attempt, attached=True, status=_status(job))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Submission(sub_id, attempt, attached=False, status="PENDING")


def _check_same_file(job: Any, digest: str, src: Path) -> None:
    """Attach only to a job running this very file: an added seed or grid value keeps the spec
    hash (and so the job id) but the running job would not run the new trials."""
    theirs = (job.metadata or {}).get("segssl.sweep_file_sha")
    if theirs not in (None, digest):
        raise SubmitError(
            f"{src}: job {job.submission_id} of this sweep is running an earlier version of the "
            "file (it differs, e.g. an added seed or grid value); wait for it to end or stop it "
            "(segssl submit --stop), then submit again to run the new trials"
        )


def _check_same_place(job: Any, where: Mapping[str, str]) -> None:
    """Attach only to a job that resolves the sweep as this submission would: another root
    (relative data paths resolve elsewhere, so other trial keys), storage or tracking server
    keeps the job id but the running job would not run what was asked for."""
    meta = job.metadata or {}
    for key, ours in where.items():
        theirs = meta.get(key)
        if theirs not in (None, ours):
            what = key.removeprefix("segssl.").replace("_", " ")
            raise SubmitError(
                f"job {job.submission_id} of this sweep is running with {what} {theirs!r}, "
                f"this submission has {ours!r}; wait for it to end or stop it "
                "(segssl submit --stop), or submit from the same place"
            )


def find_job(client: Any, spec: SweepSpec) -> tuple[int, Any]:
    """The sweep's latest attempt; raise :class:`SubmitError` when the cluster has none."""
    latest = latest_attempt(client, submission_base(spec))
    if latest is None:
        raise SubmitError(
            f"no job of sweep {spec.name!r} (submission id {submission_base(spec)}[-aN]) on "
            "this cluster; submit it first"
        )
    return latest


def follow_logs(client: Any, job_id: str, write: Callable[[str], Any] = sys.stdout.write) -> str:
    """Stream the job's logs until it ends; return its final status."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(_tail())
    for _ in range(60):  # the log stream closes just before the status is final
        status = _status(client.get_job_info(job_id))
        if status not in ("PENDING", "RUNNING"):
            return status
        time.sleep(0.5)
    return status


def stop_job(client: Any, job_id: str, timeout: float = 120.0) -> str:
    """Ask the job server to stop the job and wait until it has; return its final status."""
    client.stop_job(job_id)
    deadline = time.time() + timeout
    status = _status(client.get_job_info(job_id))
    while status in ("PENDING", "RUNNING") and time.time() < deadline:
        time.sleep(0.5)
        status = _status(client.get_job_info(job_id))
    return status
