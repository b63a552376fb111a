"""The sweep claim's heartbeat after a release or a takeover (issue 8, review): a driver must
never write a claim it no longer holds. Fast: no Ray, no tracking store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from segssl.orchestrate.claim import ClaimError, ClaimKeeper, claim_sweep


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


def test_the_claim_stays_alive_through_a_step_longer_than_the_lease(
    tmp_path: Path, acdc_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat runs from the moment the sweep is claimed: a second driver started while
    the first is still opening a slow tracking store (before Ray) is refused, not let in. (The
    data check comes before the claim: a refused sweep writes nothing.)"""
    from rich.console import Console

    from segssl.orchestrate import claim as claim_mod
    from segssl.orchestrate import runner as runner_mod
    from segssl.orchestrate.spec import parse_sweep

    monkeypatch.setattr(claim_mod, "LEASE_S", 1.0)
    monkeypatch.setattr(claim_mod, "HEARTBEAT_S", 0.1)
    seen: list[str] = []

    class Stop(Exception):
        pass

    def slow_step(*args: object) -> None:
        time.sleep(2.0)  # twice the lease
        try:
            claim_sweep(tmp_path / "s", "other").release()
            seen.append("second driver let in")
        except ClaimError:
            seen.append("refused")
        raise Stop

    monkeypatch.setattr(runner_mod, "_open_tracking", slow_step)
    raw = {
        "name": "lease",
        "seeds": [0],
        "base": {
            "train": {"epochs": 1},
            "data": {"dataset": "acdc", "root": str(acdc_root), "split": {"sizes": [4, 1, 1]}},
        },
        "stages": {"pretrain": {"config": {"stage": "pretrain", "method": {"name": "bim"}}}},
    }
    with pytest.raises(Stop):
        runner_mod.run_sweep(
            parse_sweep(raw),
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage=tmp_path / "s",
            console=Console(quiet=True),
            live=False,
            check_data=True,
        )
    assert seen == ["refused"]
    assert not (tmp_path / "s" / "driver.lock").exists()  # released on the error path
