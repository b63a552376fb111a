"""A real tracking stack and Ray cluster on loopback, for the cluster tests.

* PostgreSQL from the system's packages (``initdb`` into a private directory, ``pg_ctl start`` on
  127.0.0.1 with a free port and its own socket directory; as the ``postgres`` user when run as
  root, since ``initdb`` refuses root);
* MLflow's tracking server through ``cluster/scripts/mlflow-server.sh`` (PostgreSQL backend,
  served artifacts, the basic-auth app);
* a two-node Ray cluster: ``ray start --head`` and ``ray start --address`` with a custom resource
  per node (``node_a``, ``node_b``), unique ports and a private ``--temp-dir``, each started with
  ``--block`` in its own process group, so that tearing it down (or stopping one node
  mid-sweep) kills exactly these processes and never another user's Ray.

Every process is started in a new session and ended by its process group id.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "cluster" / "scripts"


def pg_bin() -> Path | None:
    """The directory of Debian's PostgreSQL binaries (newest version), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServiceDied(RuntimeError):
    """A service process exited while it was being waited for."""


def wait_for(pred: Any, timeout: float, what: str, every: float = 0.5) -> Any:
    """Poll ``pred()`` until it returns a truthy value; raise TimeoutError naming ``what``."""
    deadline = time.time() + timeout
    last: Any = None
    while time.time() < deadline:
        try:
            last = pred()
        except ServiceDied:
            raise
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise TimeoutError(f"{what} not ready after {timeout:g} s (last: {last!r})")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal the process group of ``proc`` (started with ``start_new_session``) and reap it;
    SIGKILL the group if it outlives ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # daemonised children left in the group


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class Postgres:
    """A private PostgreSQL server on 127.0.0.1."""

    root: Path
    port: int
    bindir: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def start(self) -> None:
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.sockdir} -c fsync=off"
        )
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log")]
        subprocess.run(
            _as_postgres([*cmd, "-o", opts, "-w", "-t", "60", "start"]),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop"]),
            capture_output=True,
        )

    def env(self) -> dict[str, str]:
        """libpq variables for a superuser connection over the private socket."""
        return {"PGHOST": str(self.sockdir), "PGPORT": str(self.port), "PGUSER": "postgres"}

    def psql(self, sql: str, db: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bindir / "psql"), "-qAt", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
            env={**os.environ, **self.env()},
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout

    def dump(self, db: str) -> str:
        """``pg_dump`` of ``db`` (schema and rows) as text."""
        out = subprocess.run(
            [str(self.bindir / "pg_dump"), "-d", db],
            env={**os.environ, **self.env()},
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout


def start_postgres(port: int) -> Postgres:
    """initdb + start a private server (as ``postgres`` when root); trust on the socket,
    scram-sha-256 passwords over TCP."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="segssl-pg-"))
    root.chmod(0o755)
    pg = Postgres(root, port, bindir)
    pg.sockdir.mkdir()
    if os.geteuid() == 0:
        ent = pwd.getpwnam("postgres")
        for p in (root, pg.sockdir):
            os.chown(p, ent.pw_uid, ent.pw_gid)
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(pg.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    pg.start()
    return pg


@dataclass
class MlflowServer:
    """``cluster/scripts/mlflow-server.sh`` on 127.0.0.1."""

    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["bash", str(SCRIPTS / "mlflow-server.sh")],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._healthy, timeout, f"MLflow server on {self.uri} (log {self.log})")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceDied(f"MLflow server exited: {self.log.read_text()[-3000:]}")
        with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:  # noqa: S310
            return r.status == 200

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            kill_group(self.proc, sig, timeout=10)
            self.proc = None


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen
    log: Path


@dataclass
class RayCluster:
    """A head and one worker node on loopback with custom resources ``node_a`` / ``node_b``."""

    temp_dir: Path
    gcs_port: int
    dashboard_port: int
    env: dict[str, str]
    nodes: dict[str, RayNode] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def job_address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ports(self) -> list[str]:
        p = free_ports(7)
        # worker ports below the kernel's ephemeral range (where free_ports draws from) and
        # above Ray's default window (10002-19999) that other local Ray instances use
        lo = random.randrange(21000, 32000 - 200)
        return [
            f"--node-manager-port={p[0]}",
            f"--object-manager-port={p[1]}",
            f"--metrics-export-port={p[2]}",
            f"--dashboard-agent-listen-port={p[3]}",
            f"--dashboard-agent-grpc-port={p[4]}",
            f"--runtime-env-agent-port={p[5]}",
            f"--min-worker-port={lo}",
            f"--max-worker-port={lo + 199}",
        ]

    def start_node(self, name: str, head: bool, num_cpus: int = 1) -> None:
        args = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps({name: 1})}",
            "--disable-usage-stats",
            *self._ports(),
        ]
        if head:
            args += [
                "--head",
                f"--port={self.gcs_port}",
                f"--ray-client-server-port={free_ports(1)[0]}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--temp-dir={self.temp_dir}",
            ]
        else:
            # a temp dir of its own: two raylets on one host must not share a session dir
            # (each node's runtime-env agent unpacks the job's packages into it; the worker's
            # re-extraction would pull the directory from under the head's driver)
            own = self.temp_dir.parent / f"ray-{name}"
            own.mkdir(exist_ok=True)
            args += [f"--address={self.address}", f"--temp-dir={own}"]
        log = self.temp_dir.parent / f"ray-{name}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                args, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.nodes[name] = RayNode(name, proc, log)

    def alive_nodes(self) -> dict[str, str]:
        """``{custom resource name: node id}`` of the cluster's alive nodes (state API)."""
        from ray.util.state import list_nodes

        out = {}
        alive = list_nodes(
            address=self.address,
            filters=[("state", "=", "ALIVE")],
            limit=1000,
            raise_on_missing_output=False,  # a dead node's record must not fail the query
        )
        for n in alive:
            for res in n.resources_total:
                if res.startswith("node_"):
                    out[res] = n.node_id
        return out

    def wait_nodes(self, names: set[str], timeout: float = 180) -> dict[str, str]:
        def ready() -> dict[str, str] | None:
            for n in self.nodes.values():
                if n.proc.poll() is not None:
                    raise ServiceDied(f"ray node {n.name} exited: {n.log.read_text()[-3000:]}")
            alive = self.alive_nodes()
            return alive if names <= set(alive) else None

        return wait_for(ready, timeout, f"Ray nodes {sorted(names)}", every=1.0)

    def wait_job_server(self, timeout: float = 120) -> None:
        def up() -> bool:
            url = self.job_address + "/api/version"
            with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310
                return r.status == 200

        wait_for(up, timeout, f"Ray job server {self.job_address}")

    def stop_node(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one node's processes (its whole process group)."""
        node = self.nodes.pop(name)
        kill_group(node.proc, sig)

    def stop(self) -> None:
        for name in [n for n in self.nodes if n != "node_a"] + ["node_a"]:
            if name in self.nodes:
                self.stop_node(name, signal.SIGTERM)


def start_ray_cluster(cluster: RayCluster, tries: int = 3) -> RayCluster:
    """Start the head (``node_a``) and one worker (``node_b``) of 1 CPU each; wait until both
    are alive and the job server answers. (The caller holds ``cluster`` before this starts
    anything, so it can always stop what was started.) A node that dies during start-up (Ray
    waits a fixed 30 s for a raylet to register, too short on a loaded 2-core machine) is
    started again, up to ``tries`` times."""
    start_node_retrying(cluster, "node_a", head=True, tries=tries)
    start_node_retrying(cluster, "node_b", head=False, tries=tries)
    cluster.wait_job_server()
    return cluster


def start_node_retrying(cluster: RayCluster, name: str, head: bool, tries: int = 3) -> None:
    """:meth:`RayCluster.start_node` and wait until it is alive; retry when it died starting."""
    want = {"node_a", name}
    for attempt in range(1, tries + 1):
        cluster.start_node(name, head=head)
        try:
            cluster.wait_nodes(want)
            return
        except ServiceDied:
            cluster.stop_node(name)
            if attempt == tries:
                raise


def new_ray_cluster(base: Path, env: dict[str, str]) -> RayCluster:
    """A :class:`RayCluster` (nothing started) with fresh ports and ``base/ray`` as temp dir."""
    tmp = base / "ray"
    tmp.mkdir(parents=True, exist_ok=True)
    gcs, dash = free_ports(2)
    return RayCluster(tmp, gcs, dash, env)


def http_status(url: str, auth: tuple[str, str] | None = None) -> int:
    """HTTP status of a GET (with basic auth when given)."""
    import base64

    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
