"""``segssl submit``: run ``segssl sweep`` as a Ray job on a remote cluster.

The sweep YAML is uploaded as the job's working directory and the job's driver runs
``segssl sweep <file> --address auto`` on the head node. Everything a trial reads or writes must
then be reachable from every node: the tracking server (an ``http(s)://`` MLflow server, or a
SQLite file on a shared filesystem) and the sweep storage (a directory mounted at the same path on
every node, e.g. NFS). Local-only defaults are refused here, before anything is submitted.

The job sees the sweep as ``segssl sweep`` run here would: relative data paths resolve against
the directory ``segssl submit`` is run from (``--root``; the data must be at that path on the
cluster too), so trial keys equal those of a local run, and the papers files of the sweep's
``tables:`` are uploaded beside it at the same relative place. The sweep is planned and its
tables checked here first, so a bad trial config or table fails before submission.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

from segssl.orchestrate.spec import SpecError, SweepSpec
from segssl.record import TAG_SWEEP

__all__ = ["SubmitError", "build_entrypoint", "check_submit_args", "submit_sweep"]


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
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        raise SubmitError(
            f"--tracking-uri {tracking_uri}: a SQLite file for a remote sweep must be an absolute "
            "path on storage shared by the cluster (sqlite:////shared/mlflow.db)"
        )
    if not tracking_uri.startswith(("http://", "https://", "sqlite:////")):
        raise SubmitError(
            f"--tracking-uri {tracking_uri}: expected http(s)://HOST:PORT or sqlite:////ABS/PATH"
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


def submit_sweep(
    sweep_path: str | Path,
    spec: SweepSpec,
    address: str,
    tracking_uri: str | None,
    storage: str | None = None,
    extend: bool = False,
    client: Any = None,
) -> str:
    """Submit the sweep as a Ray job; return the job id.

    Args:
        sweep_path: the sweep YAML (uploaded with the job).
        spec: its validated spec.
        address: Ray job server, ``http://HEAD:8265``.
        tracking_uri: tracking URI reachable from the cluster.
        storage: shared storage path (default ``spec.storage``).
        extend: pass ``--extend`` to the remote sweep.
        client: a ``JobSubmissionClient`` (tests); created from ``address`` when None.

    Raises:
        SubmitError: bad arguments (checked before contacting the cluster).
        SpecError: a trial config or a table of the sweep is invalid (checked here first).
        ConnectionError: the job server cannot be reached.
    """
    from segssl.orchestrate.plan import plan_sweep
    from segssl.orchestrate.runner import check_plan_tables

    uri, store = check_submit_args(spec, address, tracking_uri, storage)
    src = Path(sweep_path)
    if not src.is_file():
        raise SpecError(f"{src}: no such sweep file")
    root = str(Path.cwd().resolve())
    check_plan_tables(plan_sweep(spec, source=str(src), storage=store, root=root))
    tmp = Path(tempfile.mkdtemp(prefix="segssl-submit-"))
    job_file = _stage_job_dir(src, spec, tmp)
    entrypoint = build_entrypoint(job_file, uri, store, extend, root=root)
    if client is None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(address)
    return str(
        client.submit_job(
            entrypoint=entrypoint,
            runtime_env={"working_dir": str(tmp), "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}},
            metadata={TAG_SWEEP: spec.name},
        )
    )
