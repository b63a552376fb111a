"""No host synchronisation in a training step: every registered method, two steps on CPU.

A GPU step that reads a tensor's value on the host (``.item()``, ``bool(t)``, ``.tolist()``,
``.cpu()``, a data-dependent Python branch, boolean-mask indexing, ``nonzero``...) waits for the
device queue to drain. On CPU nothing waits, so these tests record the operations themselves: a
``TorchFunctionMode`` sees the Python-level reads (``item``, ``__bool__``, ``tolist``, ``cpu``,
``numpy``) and a ``TorchDispatchMode`` the ATen operators that copy a value to the host
(``_local_scalar_dense``, ``is_nonzero``, ``equal``, ``nonzero``, ``unique``, ``masked_select``,
boolean indexing). Random draws from the method's own CPU generator (the paired transform's
parameters) are host tensors by design and are not device reads; they are not flagged because
none of the recorded operations is used on them.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from segssl.data import build_data
from segssl.engine.loop import build_method
from segssl.methods import REGISTRY, get_method
from segssl.methods.base import Clock
from segssl.models import build_model

# Tensor methods that read a value back to the host
_HOST_READS = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
}
# ATen operators whose output (or output shape) needs the data on the host
_SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "equal",
    "nonzero",
    "unique",
    "_unique",
    "_unique2",
    "unique_consecutive",
    "unique_dim",
    "masked_select",
    "bincount",
    "histc",
    "repeat_interleave",
}


_PAUSED = [0]  # > 0 while the engine draws a batch (the data pipeline is not the step)


class _HostReads(TorchFunctionMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if _PAUSED[0] or ((name in _HOST_READS or name == "to") and _in_optimizer()):
            pass
        elif name in _HOST_READS:
            self.found.append(f"Tensor.{name}{_where()}")
        elif name == "to" and any(_is_cpu_target(a) for a in (*args[1:], *(kwargs or {}).values())):
            self.found.append(f"Tensor.to(cpu){_where()}")
        return func(*args, **(kwargs or {}))


def _is_cpu_target(arg: Any) -> bool:
    # only a literal "cpu": ``.to(x.device)`` is a move to the training device, which on this
    # CPU-only test is the CPU as well
    return isinstance(arg, str) and arg.startswith("cpu")


def _where() -> str:
    """`` at dir/function:line`` of the innermost segssl frame that made the call."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/segssl/" in frame.filename:
            return f" at {frame.filename.rsplit('/', 2)[-2]}/{frame.name}:{frame.lineno}"
    return ""


def _in_optimizer() -> bool:
    """True when the read is made by ``torch.optim``'s own optimiser code: its ``step`` counters
    are CPU tensors by design (unless ``capturable``/``fused``), so reading them is not a device
    synchronisation. Only the innermost caller counts (this file's modes and torch's dispatch
    plumbing skipped), so a closure run by ``optimizer.step`` or code reached through an
    optimiser frame is still recorded; ``swa_utils`` (averaged models, an EMA teacher) and the
    LR schedulers are not exempt."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if frame.name in _MODE_FRAMES and path == __file__:
            continue
        if "/torch/" in path and "/torch/optim/" not in path:
            continue  # dispatch plumbing (overrides, _compile, _dynamo, _tensor)
        return "/torch/optim/" in path and not path.endswith(_NOT_EXEMPT)
    return False


_MODE_FRAMES = ("__torch_function__", "__torch_dispatch__")
_NOT_EXEMPT = ("/torch/optim/swa_utils.py", "/torch/optim/lr_scheduler.py")


class _SyncOps(TorchDispatchMode):
    def __init__(self, found: list[str]) -> None:
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if _PAUSED[0] or (name == "_local_scalar_dense" and _in_optimizer()):
            pass
        elif name in _SYNC_OPS:
            self.found.append(f"aten::{name}{_where()}")
        elif name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
            for i in (args[1] if len(args) > 1 else ())
        ):
            self.found.append(f"aten::index (boolean mask){_where()}")
        return func(*args, **(kwargs or {}))


def host_syncs(fn: Callable[[], Any]) -> list[str]:
    """Run ``fn`` and return the host reads / sync operators it made (empty: none)."""
    found: list[str] = []
    with _HostReads(found), _SyncOps(found):
        fn()
    return found


def test_detector_sees_every_kind_of_read() -> None:
    x = torch.rand(4, requires_grad=True)
    checks: dict[str, Callable[[], Any]] = {
        "item": lambda: x.sum().item(),
        "bool": lambda: bool((x > 2).any()),
        "branch": lambda: 1 if x.sum() > 0 else 0,
        "tolist": lambda: x.detach().tolist(),
        "cpu": lambda: x.cpu(),
        "to cpu": lambda: x.to("cpu"),
        "float": lambda: float(x[0]),
        "nonzero": lambda: x.nonzero(),
        "mask": lambda: x[x > 0.5],
        "equal": lambda: torch.equal(x, x),
    }
    for label, fn in checks.items():
        assert host_syncs(fn), label
    assert host_syncs(lambda: (x * 2).softmax(0).sum().backward()) == []


def test_optimizer_exemption_covers_only_the_optimisers_own_reads() -> None:
    """The optimisers' CPU step counters are exempt; a read in a closure that ``step`` runs, or
    in ``swa_utils``' averaged model (an EMA teacher), is not."""
    w = torch.nn.Parameter(torch.rand(3))
    for opt in (torch.optim.RAdam([w]), torch.optim.Adam([w]), torch.optim.SGD([w], lr=0.1)):
        assert host_syncs(lambda o=opt: ((w**2).sum().backward(), o.step())) == []

    opt = torch.optim.SGD([w], lr=0.1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss if loss > 0 else -loss  # a data-dependent branch

    assert "Tensor.__bool__" in "".join(host_syncs(lambda: opt.step(closure)))
    ema = torch.optim.swa_utils.AveragedModel(
        torch.nn.Linear(2, 2), multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)
    )
    ema.update_parameters(torch.nn.Linear(2, 2))
    assert host_syncs(lambda: ema.update_parameters(torch.nn.Linear(2, 2)))


@pytest.fixture(scope="module")
def batches(tiny):
    cfg = tiny("baseline", "finetune")
    data = build_data(cfg.data, seed=0, labeled=True, unlabeled=True)
    out = [(next(data.labeled), next(data.unlabeled)) for _ in range(2)]
    data.close()
    return out, data.num_classes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_training_step_has_no_host_sync(name: str, tiny_method, batches, engine_optimizers) -> None:
    """training_step + backward + optimiser step + after_step, twice, for every method."""
    cls = get_method(name)
    cfg = tiny_method(name, train={"init_from": None})
    steps, num_classes = batches
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes)
    gen = torch.Generator().manual_seed(0)
    method = build_method(
        cfg, cls, model, num_classes, ("RV", "Myo", "LV"), torch.device("cpu"), gen
    ).train()
    opt = engine_optimizers(cfg, method)  # owned optimisers stepped by the method itself

    def two_steps() -> None:
        for i, (lab, unl) in enumerate(steps):
            clock = Clock(i + 1, 0, 2, 4)
            out = method.training_step(
                lab if cls.uses_labeled else None, unl if cls.uses_unlabeled else None, clock
            )
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            method.after_step(clock)

    found = host_syncs(two_steps)
    assert found == [], f"{name}: host synchronisation in the training step: {sorted(set(found))}"


@pytest.mark.parametrize("name", sorted(n for n, cls in REGISTRY.items() if cls.init != "required"))
def test_engine_step_has_no_host_sync(name: str, tiny_method, tmp_path, monkeypatch) -> None:
    """The engine's step (autocast, training_step, value logging, backward, clipping, scaler,
    optimiser, after_step) and the per-step bookkeeping of the epoch loop read nothing back;
    the batch drawing (host-side data pipeline) is not recorded."""
    from segssl.engine import loop, train

    found: list[str] = []
    steps = [0]
    draw, step = loop._Batches.draw, loop._Run._step

    def paused_draw(self, *args, **kwargs):
        _PAUSED[0] += 1
        try:
            return draw(self, *args, **kwargs)
        finally:
            _PAUSED[0] -= 1

    def recorded_step(self, *args, **kwargs):
        steps[0] += 1
        with _HostReads(found), _SyncOps(found):
            return step(self, *args, **kwargs)

    monkeypatch.setattr(loop._Batches, "draw", paused_draw)
    monkeypatch.setattr(loop._Run, "_step", recorded_step)
    cfg = tiny_method(name, train={"epochs": 1, "iters_per_epoch": 2}, optim={"grad_clip": 1.0})
    train(cfg, workdir=tmp_path)
    assert steps[0] == 2
    assert found == [], f"host synchronisation in the engine step: {sorted(set(found))}"


def test_fp16_grad_scaler_step_has_no_host_sync() -> None:
    """The engine's AMP scaler (fp16 autocast, unscale + clipping, step, update) with the
    engine's RAdam reads nothing back; PyTorch's own GradScaler reads its overflow flag."""
    from segssl.config import OptimizerSettings
    from segssl.engine import build_optimizer
    from segssl.engine.amp import SyncFreeGradScaler

    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))

    def steps(scaler_cls: type) -> Callable[[], None]:
        torch.manual_seed(0)
        net = build_model_for_amp()
        opt = build_optimizer(OptimizerSettings(), list(net.parameters()))
        scaler = scaler_cls("cpu", enabled=True)

        def run() -> None:
            for _ in range(2):
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = net(x).float().pow(2).mean()
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()

        return run

    assert host_syncs(steps(SyncFreeGradScaler)) == []
    stock = host_syncs(steps(torch.amp.GradScaler))
    assert any("_local_scalar_dense" in f or "item" in f for f in stock), stock


def build_model_for_amp() -> torch.nn.Module:
    from segssl.models import UNet

    return UNet(1, 3, base_width=4, depth=3)
