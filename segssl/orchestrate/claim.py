"""One driver per sweep: an atomic claim of the sweep storage with an owner and a lease.

The claim is a file ``<storage>/driver.lock`` created atomically only if absent (a hard link of
a private file, the NFS-safe form of ``O_CREAT | O_EXCL``), before anything else happens: no
tracking store is touched, no experiment created, no Ray started until it is held. Of N drivers
started at the same moment exactly one creates the file; the others read its owner and are
refused with it. The storage is the right place for the claim: it is what two drivers would
corrupt (trial workdirs, ``last.pt``), it exists before the tracking store does (a fresh SQLite
store cannot be raced on), and on a cluster every node shares it. The sweep's MLflow run (with
the same owner and heartbeat tags) stays a second guard for two drivers on different storages
logging into one experiment.

The file holds the owner (host, pid, the process's start time, the sweep run once created) and a
heartbeat the owner refreshes every ``HEARTBEAT_S`` seconds. A claim is *stale*, and taken over
by the next driver, when its heartbeat is older than the lease (``LEASE_S``), or when its owner
ran on this host and that process is gone -- a pid reused by another process has another start
time, so pid reuse cannot hold a sweep forever. ``--takeover`` breaks a live-looking claim for an
operator who knows its owner is gone (e.g. a node powered off less than a lease ago).

Breaking a stale claim is itself guarded by a second ``O_EXCL`` file (``driver.lock.break``) so
that two drivers finding the same stale claim cannot both take it over.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segssl.orchestrate.spec import SpecError

__all__ = [
    "HEARTBEAT_S",
    "LEASE_S",
    "ClaimError",
    "SweepClaim",
    "claim_sweep",
    "owner_alive",
    "process_start",
]

LOCK_NAME = "driver.lock"
HEARTBEAT_S = 30.0
LEASE_S = 300.0  # five missed heartbeats and more: the owner is gone (another host)
_BREAK_STALE_S = 60.0  # a break guard older than this was left by a driver that died breaking


class ClaimError(SpecError):
    """The sweep is claimed by another driver (the message names it)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        return "noboot"


def process_start(pid: int) -> str | None:
    """An identity of the process ``pid``'s start (boot id and start tick), None if unknown.

    Two processes that share a pid (one reused the other's) have different start times; Linux
    only (``/proc``), elsewhere None (then only the pid's existence and the lease count).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return f"{_boot_id()}:{fields[19]}" if len(fields) > 19 else None


def owner_alive(host: str | None, pid: str | int | None, start: str | None, beat: float) -> bool:
    """Whether a driver (host, pid, start identity, last heartbeat) is still running.

    Its heartbeat must be younger than the lease; on this host its process must also exist with
    the recorded start identity (a reused pid has another one).
    """
    if time.time() - beat >= LEASE_S:
        return False
    if host != socket.gethostname() or not str(pid or "").isdigit():
        return True  # another host: the lease is all we can know
    ipid = int(str(pid))
    try:
        os.kill(ipid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now_start = process_start(ipid)
    return not (start and now_start and start != now_start)


@dataclass
class SweepClaim:
    """A held claim: refresh it with :meth:`beat`, record the sweep run, release it.

    Writes happen only while the claim is held: after :meth:`release`, or once another driver
    took the sweep over (the file holds another token), a late heartbeat writes nothing (it
    would recreate a released claim, or overwrite the new owner's).
    """

    path: Path
    owner: dict[str, Any]
    released: bool = False
    _guard: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def _ours(self) -> bool:
        current = _read(self.path)
        return bool(current) and current.get("token") == self.owner["token"]

    def _write(self) -> None:
        with self._guard:
            if self.released or not self._ours():
                return
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(json.dumps(self.owner, sort_keys=True))
            os.replace(tmp, self.path)  # the claim file never disappears while it is rewritten

    def beat(self) -> None:
        """Refresh the heartbeat (keeps the claim alive for another lease)."""
        self.owner["heartbeat"] = time.time()
        self._write()

    def set_run(self, run_id: str) -> None:
        """Record the sweep's MLflow run in the claim (shown to refused drivers)."""
        self.owner["run_id"] = run_id
        self._write()

    def release(self) -> None:
        """Remove the claim, if it is still ours; no later write recreates it."""
        with self._guard:
            self.released = True
            with contextlib.suppress(OSError):
                if self._ours():
                    self.path.unlink()


def _describe(owner: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
    beat = time.time() - float(owner.get("heartbeat", 0))
    run = f", MLflow run {owner['run_id']}" if owner.get("run_id") else ""
    return (
        f"host {owner.get('host')}, pid {owner.get('pid')}, started {started}, last heartbeat "
        f"{beat:.0f} s ago{run}"
    )


def _read(path: Path) -> dict[str, Any] | None:
    """The owner in a claim file; ``{}`` for a claim being written; None when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(owner: dict[str, Any], path: Path) -> bool:
    if not owner:  # created but not yet written: judge by the file's age
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime < LEASE_S
        return False
    return owner_alive(
        owner.get("host"), owner.get("pid"), owner.get("start"), float(owner.get("heartbeat", 0))
    )


def _break(path: Path, seen: dict[str, Any]) -> None:
    """Remove the claim ``seen`` (stale or taken over), unless someone replaced it meanwhile."""
    guard = path.with_name(path.name + ".break")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(OSError):
            if time.time() - guard.stat().st_mtime > _BREAK_STALE_S:
                guard.unlink()
        return  # another driver is breaking it; the caller retries and sees the result
    try:
        os.close(fd)
        now = _read(path)
        if now is not None and now.get("token") == seen.get("token"):
            path.unlink()
    finally:
        with contextlib.suppress(OSError):
            guard.unlink()


def check_unclaimed(storage: Path, name: str, *, takeover: bool = False) -> None:
    """Read-only: refuse at once when another live driver holds ``storage`` (what
    :func:`claim_sweep` would refuse), so that a second driver neither checks the data nor
    writes anything before being told; the claim itself is still taken by :func:`claim_sweep`.

    Raises:
        ClaimError: another live driver holds the claim (unless ``takeover``).
    """
    path = Path(storage) / LOCK_NAME
    owner = _read(path)
    if owner is not None and _alive(owner, path) and not takeover:
        raise _held_by(name, owner, path)


def _held_by(name: str, owner: dict[str, Any], path: Path) -> ClaimError:
    """The refusal of a driver whose sweep ``owner``, alive, holds (its claim file ``path``)."""
    return ClaimError(
        f"sweep {name!r} is being run right now by another driver ({_describe(owner)}); its "
        f"claim is {path}. Wait for it to end or stop it; if you know it is gone, rerun with "
        "--takeover"
    )


def claim_sweep(
    storage: Path,
    name: str,
    *,
    takeover: bool = False,
    on_break: Callable[[str], None] | None = None,
) -> SweepClaim:
    """Claim ``storage`` for this process; refuse when another live driver holds it.

    Args:
        storage: the sweep storage (created if missing).
        name: the sweep name (for messages).
        takeover: break a claim whose owner looks alive (the operator knows it is gone).
        on_break: called with a description of each stale claim broken.

    Raises:
        ClaimError: another live driver holds the claim (named: host, pid, start, heartbeat,
            MLflow run); or the storage cannot be written.
    """
    storage.mkdir(parents=True, exist_ok=True)
    path = storage / LOCK_NAME
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "started": time.time(),
        "heartbeat": time.time(),
        "sweep": name,
        "token": uuid.uuid4().hex,
    }
    for _ in range(20):
        try:
            _create(path, me)
        except FileExistsError:
            owner = _read(path)
            if owner is None:
                continue  # released meanwhile: try again
            if _alive(owner, path) and not takeover:
                raise _held_by(name, owner, path) from None
            if on_break is not None:
                state = "live-looking" if _alive(owner, path) else "stale"
                on_break(f"taking over the {state} claim of {path} ({_describe(owner)})")
            _break(path, owner)
            time.sleep(0.05)
            continue
        except OSError as exc:
            raise ClaimError(f"{path}: cannot create the sweep's claim file ({exc})") from None
        return SweepClaim(path, me)
    raise ClaimError(f"{path}: could not claim the sweep (the claim keeps changing hands)")


def _create(path: Path, owner: dict[str, Any]) -> None:
    """Create ``path`` holding ``owner``, atomically and only if it does not exist.

    The owner is written to a private file first and hard-linked to ``path`` (``link`` fails
    when ``path`` exists, atomically, also on NFS), so a claim is never seen half-written.
    Filesystems without hard links fall back to ``O_EXCL``.

    Raises:
        FileExistsError: ``path`` exists.
    """
    tmp = path.with_name(f".{path.name}.{owner['token']}")
    tmp.write_text(json.dumps(owner, sort_keys=True))
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # no hard links here
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(owner, sort_keys=True))
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


class ClaimKeeper:
    """Refreshes a claim's heartbeat (and runs ``also``, e.g. the MLflow heartbeat) from a daemon
    thread every ``every`` seconds (default ``HEARTBEAT_S``) until :meth:`stop`; ``also`` may be
    set or cleared while it runs."""

    def __init__(
        self,
        claim: SweepClaim,
        every: float | None = None,
        also: Callable[[], None] | None = None,
    ) -> None:
        self.claim, self.also = claim, also
        self.every = HEARTBEAT_S if every is None else every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="segssl-heartbeat")
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with contextlib.suppress(Exception):  # a missed heartbeat is harmless
                self.claim.beat()
            if self.also is not None:
                with contextlib.suppress(Exception):
                    self.also()

    def stop(self) -> None:
        """Stop refreshing (waits for a heartbeat in progress)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
