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
which :func:`~segssl.engine.schedule.build_optimizer` sets for CUDA runs with AMP. Where that
does not hold (e.g. an optimiser state restored from a non-capturable checkpoint), the stock
host read is used.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["SyncFreeGradScaler"]


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
