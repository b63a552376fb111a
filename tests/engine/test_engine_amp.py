"""SyncFreeGradScaler: the stock GradScaler's results (taken and skipped steps) on CPU fp16."""

from __future__ import annotations

import copy

import pytest
import torch

from segssl.engine.amp import SyncFreeGradScaler


def _optimizers(params) -> dict[str, torch.optim.Optimizer]:
    return {
        "radam": torch.optim.RAdam(params, lr=1e-2, weight_decay=1e-4),
        "adam": torch.optim.Adam(params, lr=1e-2),
        "sgd": torch.optim.SGD(params, lr=1e-2, momentum=0.9),
    }


def _run(scaler_cls, name: str, inputs: list[torch.Tensor]) -> tuple[dict, dict, list[float]]:
    """Steps of a small fp16-autocast net; ``inf`` in an input makes that step overflow."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    opt = _optimizers(list(net.parameters()))[name]
    scaler = scaler_cls("cpu", init_scale=2.0**8, growth_interval=2)
    scales = []
    for x in inputs:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = net(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()), scales


@pytest.mark.parametrize("name", ["radam", "adam", "sgd"])
def test_sync_free_scaler_equals_the_stock_scaler_on_taken_and_skipped_steps(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, 4, generator=g) for _ in range(6)]
    bad = torch.full((6, 4), float("inf"))
    # overflow at the first step (state created by a skipped step), then in the middle
    inputs = [bad, xs[0], xs[1], bad, xs[2], xs[3]]
    ref_net, ref_opt, ref_scales = _run(torch.amp.GradScaler, name, inputs)
    net, opt, scales = _run(SyncFreeGradScaler, name, inputs)
    assert scales == ref_scales and scales[0] < 2.0**8  # the overflows were seen
    for k, v in ref_net.items():
        torch.testing.assert_close(net[k], v, rtol=0, atol=0)
    for p, state in ref_opt["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(opt["state"][p][k], v, rtol=0, atol=0)
    if name != "sgd":  # the step counters count the taken steps only
        assert all(float(s["step"]) == 4 for s in opt["state"].values())


def test_sync_free_scaler_skipped_step_leaves_everything_unchanged() -> None:
    """Negative control for the revert: the skipped step's update would have changed it."""
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.RAdam(net.parameters(), lr=0.1)
    scaler = SyncFreeGradScaler("cpu")
    x = torch.randn(4, 3)
    for _ in range(2):  # state exists
        opt.zero_grad()
        scaler.scale(net(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
    before = copy.deepcopy((net.state_dict(), opt.state_dict()["state"]))
    opt.zero_grad()
    scaler.scale(net(x).pow(2).mean()).backward()
    net.weight.grad[0, 0] = float("nan")
    scaler.step(opt)
    for k, v in before[0].items():
        assert torch.equal(net.state_dict()[k], v), k
    for p, s in before[1].items():
        for k, v in s.items():
            assert torch.equal(opt.state_dict()["state"][p][k], v), k
