"""The sweep claim's heartbeat after a release or a takeover (issue 8, review): a driver must
never write a claim it no longer holds. Fast: no Ray, no tracking store."""

from __future__ import annotations

import json
import time
from pathlib import Path

from segssl.orchestrate.claim import ClaimKeeper, claim_sweep


def _token(storage: Path) -> str:
    return json.loads((storage / "driver.lock").read_text())["token"]


def test_a_heartbeat_after_release_does_not_recreate_the_claim(tmp_path: Path) -> None:
    claim = claim_sweep(tmp_path, "s")
    claim.release()
    claim.beat()  # a heartbeat thread that had not stopped yet
    claim.set_run("run-1")
    assert not (tmp_path / "driver.lock").exists()
    # the same process (a notebook, the demo) can run the sweep again
    claim_sweep(tmp_path, "s").release()


def test_a_keeper_left_running_after_release_leaves_no_claim(tmp_path: Path) -> None:
    claim = claim_sweep(tmp_path, "s")
    keeper = ClaimKeeper(claim, every=0.01)
    claim.release()  # an error path that released without stopping the keeper
    time.sleep(0.2)
    keeper.stop()
    assert not (tmp_path / "driver.lock").exists()


def test_a_driver_taken_over_does_not_overwrite_the_new_owner(tmp_path: Path) -> None:
    old = claim_sweep(tmp_path, "s")
    new = claim_sweep(tmp_path, "s", takeover=True)
    old.beat()
    old.set_run("old-run")
    assert _token(tmp_path) == new.owner["token"]
    old.release()
    assert _token(tmp_path) == new.owner["token"]
    new.release()
    assert not (tmp_path / "driver.lock").exists()
