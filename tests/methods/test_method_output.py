"""``Method.output``: the weighted total from the declared terms and their time-varying scales."""

from __future__ import annotations

from typing import ClassVar, Literal

import pytest
import torch

from segssl.config import AugmentConfig, MethodConfig
from segssl.methods.base import Method, MethodContext
from segssl.models import UNet


class _Config(MethodConfig):
    name: Literal["two_terms"] = "two_terms"
    w_ce: float = 1.0
    w_cons: float = 2.0


class _TwoTerms(Method):
    Config: ClassVar[type[MethodConfig]] = _Config
    terms = {"ce": "w_ce", "cons": "w_cons", "acc": None}


def _method(**cfg: float) -> _TwoTerms:
    ctx = MethodContext(2, ("a",), torch.device("cpu"), AugmentConfig(), 3, torch.Generator(), 4, 2)
    return _TwoTerms(UNet(1, 2, base_width=4, depth=3), _Config(**cfg), ctx)


def test_output_scales_the_named_term() -> None:
    parts = {"ce": torch.tensor(1.0), "cons": torch.tensor(3.0), "acc": torch.tensor(0.5)}
    out = _method().output(parts, scale={"cons": 0.25})
    assert float(out["loss"]) == pytest.approx(1.0 + 2.0 * 0.25 * 3.0)


@pytest.mark.parametrize("key", ["con", "acc"])
def test_a_scale_for_no_weighted_term_is_refused(key: str) -> None:
    """A misspelt ramp-up key would otherwise leave the term at full weight from step 1."""
    parts = {"ce": torch.tensor(1.0), "cons": torch.tensor(3.0), "acc": torch.tensor(0.5)}
    with pytest.raises(KeyError, match=rf"scale \['{key}'\] .* weighted terms \['ce', 'cons'\]"):
        _method().output(parts, scale={key: 0.0})


def test_a_scale_for_a_term_switched_off_is_allowed() -> None:
    parts = {"ce": torch.tensor(1.0), "acc": torch.tensor(0.5)}
    out = _method(w_cons=0.0).output(parts, scale={"cons": 0.5})
    assert float(out["loss"]) == pytest.approx(1.0)
