"""SyncFreeGradScaler (``train.grad_scaler: sync_free``): the stock GradScaler's results (taken
and skipped steps) on CPU fp16; the optimisers are capturable with it and only with it."""

from __future__ import annotations

import copy
import warnings

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


def test_stock_scaler_state_loads_and_steps_alike() -> None:
    """A checkpoint written with the stock GradScaler (before the sync-free one) resumes: same
    state keys, same scale and growth tracker afterwards."""
    stock = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    stock._lazy_init_scale_growth_tracker(torch.device("cpu"))
    stock.update(2.0**7)  # a scale another run left behind
    state = stock.state_dict()
    free = SyncFreeGradScaler("cpu")
    free.load_state_dict(state)
    assert free.state_dict() == state and free.get_scale() == 2.0**7


def test_scheduler_sees_the_same_lr_sequence_with_skipped_steps() -> None:
    """The always-step scaler calls ``optimizer.step()`` on overflowed steps too (so torch's
    'lr_scheduler.step() before optimizer.step()' warning after a skipped first step does not
    appear), but the schedule, stepped per epoch, gives the same lr and results."""
    results = []
    for cls in (torch.amp.GradScaler, SyncFreeGradScaler):
        torch.manual_seed(0)
        net = torch.nn.Linear(4, 2)
        opt = torch.optim.RAdam(net.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
        scaler = cls("cpu", init_scale=2.0**8)
        lrs = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _epochs(net, opt, sched, scaler, lrs)
        told = any("lr_scheduler.step()" in str(w.message) for w in caught)
        results.append((lrs, copy.deepcopy(net.state_dict()), told))
    assert results[0][0] == results[1][0]
    for k, v in results[0][1].items():
        assert torch.equal(results[1][1][k], v), k
    assert results[0][2] and not results[1][2]  # only the stock scaler's skip is 'seen'


def _epochs(net, opt, sched, scaler, lrs: list) -> None:
    """Three one-step epochs, the first overflowing; the lr after each epoch into ``lrs``."""
    for epoch in range(3):
        x = torch.full((2, 4), float("inf")) if epoch == 0 else torch.randn(2, 4)
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = net(x).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])


class _Stop(Exception):
    pass


def _train_cut_after_epoch_1(cfg, workdir):
    """Train ``cfg`` in ``workdir``, killed right after epoch 1's checkpoint; that checkpoint."""
    from segssl.engine import train

    def interrupt(metrics: dict, step: int) -> None:
        if step == 1 and "best_epoch" not in metrics:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, interrupt, workdir=workdir)
    return workdir / "checkpoints/last.pt"


def test_a_capturable_optimiser_state_resumes_on_the_cpu(tiny, tmp_path) -> None:
    """A CUDA fp16 run with the sync-free scaler saves Adam/RAdam ``capturable`` (counters on GPU);
    ``load_state_dict`` takes the groups' flags from the file, and a capturable optimiser
    cannot step on the CPU (torch asserts). Resuming such a checkpoint where the run builds a
    non-capturable optimiser (CPU, or CUDA without AMP) must take the run's flag and give the
    same weights as an uninterrupted run."""
    from segssl.engine import train
    from segssl.engine.checkpoint import load_checkpoint, save_checkpoint

    cfg = tiny("baseline", "finetune", optim={"name": "adam"}, train={"epochs": 2})
    full = tmp_path / "full"
    train(cfg, workdir=full)

    cut = tmp_path / "cut"
    last = _train_cut_after_epoch_1(cfg, cut)
    state = load_checkpoint(last)
    assert state["epoch"] == 1
    for opt in state["optimizers"].values():  # as a CUDA run with AMP writes it
        for group in opt["param_groups"]:
            assert group["capturable"] is False
            group["capturable"] = True
    save_checkpoint(last, {k: v for k, v in state.items() if k not in ("format", "version")})
    train(cfg, workdir=cut)
    a = load_checkpoint(full / "checkpoints/last.pt")
    b = load_checkpoint(last)
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k
    assert all(
        g["capturable"] is False for o in b["optimizers"].values() for g in o["param_groups"]
    )


@pytest.mark.parametrize(("scaler", "capturable"), [("stock", False), ("sync_free", True)])
def test_optimisers_are_capturable_only_with_the_sync_free_scaler(
    scaler, capturable, tiny, tmp_path, monkeypatch
) -> None:
    """The loop builds every optimiser, and gives every restored one on resume, the runtime's
    ``capturable`` (True on CUDA with float16 AMP and the sync-free scaler only: see
    test_engine_schedule). Faked here on the CPU, where torch refuses capturable optimisers: the
    flag is recorded and the real calls get False."""
    from segssl.engine import loop, train
    from segssl.engine.runtime import Runtime

    class CudaLike(Runtime):  # the decision the runtime makes on a CUDA device
        @property
        def capturable(self) -> bool:
            return self.scaled and self.grad_scaler == "sync_free"

    rt = CudaLike(torch.device("cpu"), True, False, torch.float16, scaler)
    monkeypatch.setattr(loop, "resolve_runtime", lambda cfg: rt)
    built, restored = [], []
    build, restore = loop.build_optimizer, loop.set_capturable

    def build_spy(settings, named, capturable=False):
        built.append(capturable)
        return build(settings, named, capturable=False)

    def restore_spy(opt, flag):
        restored.append(flag)
        restore(opt, False)

    monkeypatch.setattr(loop, "build_optimizer", build_spy)
    monkeypatch.setattr(loop, "set_capturable", restore_spy)

    class Stop(Exception):
        pass

    def interrupt(metrics: dict, step: int) -> None:
        if step == 1 and "best_epoch" not in metrics:
            raise Stop

    cfg = tiny("baseline", "finetune", optim={"name": "adam"}, train={"epochs": 2})
    with pytest.raises(Stop):
        train(cfg, interrupt, workdir=tmp_path)
    train(cfg, workdir=tmp_path)
    assert built == [capturable, capturable] and restored == [capturable]


@pytest.mark.parametrize("name", ["adam", "radam"])
def test_sync_free_scaler_equals_stock_with_clipping_and_param_groups(name: str) -> None:
    """The engine's order (unscale_, clip_grad_norm_, step) with two parameter groups of their
    own lr and weight decay: clipping turns an overflow's inf gradients into NaN, which the
    revert must undo like the stock skip."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 4, generator=g) for _ in range(4)]
    inputs = [xs[0], torch.full((5, 4), float("inf")), xs[1], xs[2], xs[3]]
    out = []
    for cls in (torch.amp.GradScaler, SyncFreeGradScaler):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
        groups = [
            {"params": net[0].parameters(), "lr": 1e-2, "weight_decay": 1e-3},
            {"params": net[2].parameters(), "lr": 3e-3, "weight_decay": 0.0},
        ]
        opt = {"adam": torch.optim.Adam, "radam": torch.optim.RAdam}[name](groups)
        scaler = cls("cpu", init_scale=2.0**6, growth_interval=2)
        for x in inputs:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.float16):
                loss = net(x).float().pow(2).mean()
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            scaler.step(opt)
            scaler.update()
        out.append((copy.deepcopy(net.state_dict()), copy.deepcopy(opt.state_dict()), scaler))
    (ref_net, ref_opt, ref_scaler), (net_s, opt_s, scaler_s) = out
    assert scaler_s.get_scale() == ref_scaler.get_scale()
    for k, v in ref_net.items():
        assert torch.equal(net_s[k], v), k
    for p, state in ref_opt["state"].items():
        for k, v in state.items():
            assert torch.equal(opt_s["state"][p][k], v), (p, k)
    assert all(float(s["step"]) == 4 for s in opt_s["state"].values())  # one step skipped


_AMP_SETTINGS = [("float16", "stock"), ("float16", "sync_free"), ("bfloat16", "stock")]


@pytest.mark.parametrize(("dtype", "scaler"), _AMP_SETTINGS)
def test_scaler_state_resumes_and_a_changed_amp_setting_is_refused(
    dtype, scaler, tiny, tmp_path, monkeypatch
) -> None:
    """``amp: on`` with each ``amp_dtype`` / ``grad_scaler`` (the CUDA runtime forced on the CPU
    from the config, as resolve_runtime decides it there): a run cut after its first epoch
    resumes to the uninterrupted run's weights and scaler state (float16: an enabled scaler's
    scale, overflow-lowered on the first fp16 step; bfloat16: a disabled scaler's empty state);
    the same workdir under any other AMP setting is refused before anything is written."""
    from segssl.engine import loop, train
    from segssl.engine.checkpoint import CheckpointError, load_checkpoint
    from segssl.engine.runtime import Runtime

    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}

    def cuda_like(train_cfg) -> Runtime:
        amp = train_cfg.amp == "on"
        return Runtime(
            torch.device("cpu"), amp, False, dtypes[train_cfg.amp_dtype], train_cfg.grad_scaler
        )

    monkeypatch.setattr(loop, "resolve_runtime", cuda_like)

    def cfg_for(amp_dtype: str | None, grad_scaler: str | None):
        amp = {"amp": "on", "amp_dtype": amp_dtype, "grad_scaler": grad_scaler}
        amp = {k: v for k, v in amp.items() if v is not None} if amp_dtype else {"amp": "off"}
        train_section = {"epochs": 2, "iters_per_epoch": 2, "pictures": 0, **amp}
        return tiny("baseline", "finetune", optim={"name": "adam"}, train=train_section)

    cfg = cfg_for(dtype, scaler)
    full = tmp_path / "full"
    train(cfg, workdir=full)

    cut = tmp_path / "cut"
    last = _train_cut_after_epoch_1(cfg, cut)
    saved = load_checkpoint(last)["scaler"]
    assert ("scale" in saved) == (dtype == "float16")  # a disabled scaler saves {}
    before = {p: p.read_bytes() for p in cut.rglob("*") if p.is_file()}
    for other in [*(s for s in _AMP_SETTINGS if s != (dtype, scaler)), (None, None)]:
        with pytest.raises(CheckpointError, match="written by a different config"):
            train(cfg_for(*other), workdir=cut)
        assert {p: p.read_bytes() for p in cut.rglob("*") if p.is_file()} == before
    train(cfg, workdir=cut)
    a, b = load_checkpoint(full / "checkpoints/last.pt"), load_checkpoint(last)
    assert a["scaler"] == b["scaler"]
    for k, v in a["model"].items():
        assert torch.equal(b["model"][k], v), k
