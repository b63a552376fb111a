"""AMP's gradient scaler with its skip decision taken on the device (no host synchronisation).

PyTorch's ``GradScaler.step`` calls ``optimizer.step()`` only when no gradient overflowed; for
optimisers without fused AMP support (RAdam, and Adam/SGD unless ``fused``) it decides by reading
the ``found_inf`` flag on the host with ``.item()``: on a GPU, one device-to-host
synchronisation per training step. :class:`SyncFreeGradScaler` takes the step unconditionally
and then puts every tensor the step may have changed (each parameter and its optimiser state)
back to its value before the step where the flag is set, with ``torch.where`` on the device.

The result equals the stock scaler's: a skipped step leaves parameters and optimiser state
bitwise unchanged (state created lazily by that step is reset to its initial zeros, which is
what RAdam and Adam initialise it to, and what SGD's momentum buffer amounts to without
dampening); a taken step is the optimiser's own. It needs every state tensor on the flag's
device, step counters included: Adam and RAdam keep them on the host unless ``capturable=True``,
which :func:`~segssl.engine.schedule.build_optimizer` sets for CUDA float16 runs with this scaler
(a resumed run's restored optimiser gets the run's flag back with :func:`set_capturable`). Where
that does not hold, the stock host read is used.

It is the engine's option ``train.grad_scaler: sync_free``, not its default: on an H200
(bench/gpu_check.py, 2026-11-28) the per-tensor copies cost far more than the one host read they
avoid (a width-16 U-Net step: 34.4 ms against the stock scaler's 15.9 ms).

Memory: one copy of every parameter and optimiser state tensor per step (about 3x the model
for Adam/RAdam), freed after the step. Step semantics: ``optimizer.step()`` runs on every step,
overflowed ones included, and is then undone; the lr schedule (stepped per epoch by the engine)
and the results are the stock scaler's, but torch's "``lr_scheduler.step()`` before
``optimizer.step()``" warning after an overflowed first step does not appear, the optimiser's
internal call count includes skipped steps, and hooks registered on ``optimizer.step`` run on
skipped steps too (the engine registers none).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SCALERS", "SyncFreeGradScaler", "set_capturable"]


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Give a restored optimiser this run's ``capturable`` flag, moving its step counters.

    ``Optimizer.load_state_dict`` takes every group's flags from the file: a capturable
    Adam/RAdam (a CUDA float16 run with the sync-free scaler) resumed on the CPU stays
    capturable and cannot step there (torch asserts capturable devices), and a non-capturable
    checkpoint resumed with the sync-free scaler would keep the stock scaler's host read.
    Capturable step counters go to their parameter's device as float32 (as torch keeps them),
    others to the CPU. Optimisers without the flag (SGD) are left alone.
    """
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            step = state.get("step")
            if isinstance(step, torch.Tensor):
                state["step"] = step.to(p.device, torch.float32) if capturable else step.to("cpu")


def _state_tensors(state: dict) -> list[torch.Tensor]:
    return [v for v in state.values() if isinstance(v, torch.Tensor)]


class SyncFreeGradScaler(torch.amp.GradScaler):
    """``torch.amp.GradScaler`` whose overflow skip reads nothing back (see the module doc)."""

    def _maybe_opt_step(
        self,
        optimizer: torch.optim.Optimizer,
        optimizer_state: dict[str, Any],
        *args: Any,
        **kwargs: Any,
    ) -> float | None:
        flags = list(optimizer_state["found_inf_per_device"].values())
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if len(flags) != 1 or not self._all_on(optimizer, params, flags[0].device):
            return super()._maybe_opt_step(optimizer, optimizer_state, *args, **kwargs)
        before = {
            id(t): t.detach().clone()
            for p in params
            for t in (p, *_state_tensors(optimizer.state.get(p, {})))
        }
        retval = optimizer.step(*args, **kwargs)
        skip = flags[0] > 0  # a 0-dim bool on the device
        with torch.no_grad():
            for p in params:
                for t in (p, *_state_tensors(optimizer.state.get(p, {}))):
                    old = before.get(id(t))
                    if old is None:  # created by this step: back to its initial zeros
                        t.masked_fill_(skip, 0)
                    else:
                        t.copy_(torch.where(skip, old, t))
        return retval

    @staticmethod
    def _all_on(
        optimizer: torch.optim.Optimizer, params: list[torch.Tensor], device: torch.device
    ) -> bool:
        """Parameters and existing state on ``device``, and no host-side step counters to come
        (Adam/RAdam create them on the host unless ``capturable``)."""
        for g in optimizer.param_groups:
            if "capturable" in g and not g["capturable"] and device.type != "cpu":
                return False
        return all(
            t.device == device
            for p in params
            for t in (p, *_state_tensors(optimizer.state.get(p, {})))
        )


SCALERS: dict[str, type[torch.amp.GradScaler]] = {
    "stock": torch.amp.GradScaler,
    "sync_free": SyncFreeGradScaler,
}
"""``train.grad_scaler`` -> the scaler class the engine builds."""
