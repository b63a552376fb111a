"""Fixtures of the cluster tests: PostgreSQL, MLflow's server with basic auth and a two-node
Ray cluster, all on loopback and started once per session (see ``loopback_stack.py``); tiny
sweeps on a synthetic archive, submitted with ``segssl submit`` (``cluster_helpers.py``).

Every test here is marked ``cluster``: ``pytest -m cluster`` runs them alone, ``-m "not cluster"``
leaves them out; CI runs them (``.ci/run`` installs PostgreSQL and Chromium).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import loopback_stack as stack
import pytest
from cluster_helpers import PG_PASSWORD, Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.cluster)


def _require(tool: str, found: Any) -> None:
    if not found:
        pytest.fail(
            f"{tool} is needed by the cluster tests (Debian: apt-get install postgresql chromium; "
            ".ci/run installs both); deselect them with -m 'not cluster'"
        )


@pytest.fixture(scope="session")
def cluster_stack() -> Iterator[Stack]:
    _require("PostgreSQL (initdb)", stack.pg_bin())
    base = Path(tempfile.mkdtemp(prefix="segssl-cl-"))  # short: Ray's socket paths live here
    base.chmod(0o755)
    password = "mlf-" + secrets.token_urlsafe(18)
    pg_port, ml_port = stack.free_ports(2)
    started: list[Any] = []
    try:
        pg = stack.start_postgres(pg_port)
        started.append(pg)
        setup = subprocess.run(
            ["bash", str(stack.SCRIPTS / "postgres-setup.sh")],
            env={**os.environ, **pg.env(), "MLFLOW_DB_PASSWORD": PG_PASSWORD},
            capture_output=True,
            text=True,
        )
        assert setup.returncode == 0, setup.stderr
        server_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            "MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow@127.0.0.1:{pg_port}/mlflow",
            "PGPASSWORD": PG_PASSWORD,
            "MLFLOW_ARTIFACTS_DESTINATION": str(base / "artifacts"),
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLFLOW_HOST": "127.0.0.1",
            "MLFLOW_PORT": str(ml_port),
            "MLFLOW_WORKERS": "1",
            "MLFLOW_AUTH_CACHE_TTL_SECONDS": "60",
        }
        server = stack.MlflowServer(ml_port, server_env, base / "mlflow-server.log")
        started.append(server)
        server.start()
        # Ray's nodes get no MLflow variables and no PYTHONPATH: credentials and the segssl code
        # must reach the trials through the job's runtime environment
        ray_env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("MLFLOW_", "RAY_", "PYTHONPATH"))
            },
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray's memory monitor kills the newest workers when the *machine* is at 95 %:
            # on a shared CI box that is other jobs' memory, not these tiny trials'
            "RAY_memory_monitor_refresh_ms": "0",
            "OMP_NUM_THREADS": "1",
            "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        }
        ray_cluster = stack.new_ray_cluster(base, ray_env)
        started.append(ray_cluster)
        stack.start_ray_cluster(ray_cluster)
        from segssl.data import synthesize

        data = synthesize("acdc", base / "data" / "acdc", scans=6, size=32, seed=0)
        yield Stack(base, pg, server, ray_cluster, password, Path(data))
    finally:
        for svc in reversed(started):
            try:
                svc.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing the rest down
                print(f"teardown of {type(svc).__name__} failed: {exc}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        if started:
            shutil.rmtree(started[0].root, ignore_errors=True)
