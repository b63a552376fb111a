"""``method.streams``: labeled and unlabeled images through the network as one batch (``joint``,
shared BatchNorm statistics, the default) or one pass per stream (``separate``)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from segssl.config import canonical_json, parse_run_config
from segssl.engine.loop import build_method
from segssl.methods import REGISTRY
from segssl.methods.base import Clock, SemiConfig, StreamsConfig
from segssl.methods.mechanics import joint_forward
from segssl.models import build_model
from segssl.orchestrate.plan import trial_key

NUM_CLASSES = 4
SEMI = sorted(n for n, c in REGISTRY.items() if issubclass(c.Config, SemiConfig))
STREAMS = sorted(n for n, c in REGISTRY.items() if issubclass(c.Config, StreamsConfig))


def test_the_semi_supervised_methods_with_a_labeled_and_an_unlabeled_stream_take_it() -> None:
    assert set(SEMI) >= {
        "entmin",
        "mean_teacher",
        "ict",
        "uamt",
        "consistency",
        "gmi",
        "adversarial",
        "self_training",
    }
    for name in SEMI:
        assert REGISTRY[name].Config.model_fields["streams"].default == "joint", name


def test_every_method_with_a_labeled_and_an_unlabeled_stream_takes_streams() -> None:
    """ideal_finetune's two decoders share one encoder run on the labeled and unlabeled images
    (a BatchNorm ResNet-50) just as the others do: it takes the same setting."""
    both = {n for n, c in REGISTRY.items() if c.uses_labeled and c.uses_unlabeled}
    assert "ideal_finetune" in both and both <= set(STREAMS)
    for name in STREAMS:
        assert REGISTRY[name].Config.model_fields["streams"].default == "joint", name
        assert "streams" in REGISTRY[name].Config.key_neutral_defaults, name


def test_ideal_finetune_separate_streams_encode_each_stream_alone(tiny_method) -> None:
    sizes: dict[str, list[int]] = {}
    for streams in ("joint", "separate"):
        cfg = tiny_method("ideal_finetune", method={"streams": streams})
        torch.manual_seed(0)
        model = build_model(cfg.model, NUM_CLASSES)
        m = build_method(cfg, REGISTRY["ideal_finetune"], model, NUM_CLASSES, ("a",), "cpu")
        m.train()
        seen = sizes.setdefault(streams, [])
        encode = m.model.encode
        m.model.encode = lambda x, _e=encode, _s=seen: (_s.append(x.shape[0]), _e(x))[1]
        lab, unl = _batches()
        m.training_step(lab, unl, Clock(2, 0, 2, 8))
    assert sizes == {"joint": [5], "separate": [2, 3]}


def _batches() -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    lab = {
        "image": torch.rand(2, 1, 32, 32, generator=g),
        "label": torch.randint(0, NUM_CLASSES, (2, 32, 32), generator=g),
    }
    return lab, {"image": torch.rand(3, 1, 32, 32, generator=g)}


def _student_batches(tiny_method, name: str, **method: Any) -> list[int]:
    """The batch sizes of the student network's forward passes in one training step."""
    cfg = tiny_method(name, method=method, train={"epochs": 4, "init_from": None})
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_CLASSES)
    gen = torch.Generator().manual_seed(0)
    m = build_method(cfg, REGISTRY[name], model, NUM_CLASSES, ("a", "b", "c"), "cpu", gen)
    m.train()
    sizes: list[int] = []
    hook = m.model.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    lab, unl = _batches()
    m.training_step(lab, unl, Clock(2, 0, 2, 8))
    hook.remove()
    return sizes


@pytest.mark.parametrize("name", SEMI)
def test_separate_streams_never_put_a_labeled_and_an_unlabeled_image_in_one_batch(
    name: str, tiny_method
) -> None:
    extra = {"teacher": True} if name == "gmi" else {}
    joint = _student_batches(tiny_method, name, **extra)
    separate = _student_batches(tiny_method, name, streams="separate", **extra)
    # joint: the first student pass holds the 2 labeled images and unlabeled ones
    assert joint[0] > 2
    # separate: the labeled images go alone, then the unlabeled side in passes of its own
    assert separate[0] == 2 and len(separate) == len(joint) + 1
    assert sum(separate[:2]) == joint[0] and separate[2:] == joint[1:]


def test_separate_labeled_logits_are_the_network_on_the_labeled_images_alone(tiny_method):
    """entmin without its entropy term is the supervised loss of ``model(labeled)`` when the
    streams are separate (BatchNorm sees only the labeled batch), not when they are joint."""
    from segssl.losses import cross_entropy

    lab, unl = _batches()
    losses = {}
    for streams in ("joint", "separate"):
        cfg = tiny_method("entmin", method={"w_ent": 0.0, "streams": streams})
        torch.manual_seed(0)
        model = build_model(cfg.model, NUM_CLASSES)
        m = build_method(cfg, REGISTRY["entmin"], model, NUM_CLASSES, ("a", "b", "c"), "cpu")
        m.train()
        losses[streams] = float(m.training_step(lab, unl, Clock(1, 0, 2, 8))["loss"].detach())
        alone = float(cross_entropy(m.model(lab["image"]), lab["label"]).detach())
    assert losses["separate"] == pytest.approx(alone, rel=1e-6)
    assert losses["joint"] != pytest.approx(alone, rel=1e-3)


def test_joint_forward_joins_structured_outputs_like_one_pass() -> None:
    """Tuples and dicts of tensors (gmi's ``(logits, taps)``) come back batch-joined."""

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor, taps: tuple = ()) -> tuple:
            return x * 2, {t: x + i for i, t in enumerate(taps)}

    a, b = torch.rand(2, 1, 4, 4), torch.rand(3, 1, 4, 4)
    one = joint_forward(Net(), a, b, True, taps=("enc", "dec"))
    two = joint_forward(Net(), a, b, False, taps=("enc", "dec"))
    torch.testing.assert_close(one[0], two[0])
    assert one[1].keys() == two[1].keys()
    for k in one[1]:
        torch.testing.assert_close(one[1][k], two[1][k])


def test_streams_is_left_out_of_keys_at_its_default() -> None:
    """Keys published before the field stay valid; ``separate`` is another trial."""
    raw = {"stage": "semi", "method": {"name": "entmin"}}
    default = parse_run_config(raw)
    assert "streams" not in canonical_json(default)
    sep = parse_run_config({**raw, "method": {"name": "entmin", "streams": "separate"}})
    assert trial_key(sep, None) != trial_key(default, None)
    with pytest.raises(ValueError, match="streams"):
        parse_run_config({**raw, "method": {"name": "entmin", "streams": "both"}})


def _parts(tiny_method, name: str, streams: str, labeled: bool, amp: bool, **method: Any):
    """One training step's loss parts with every BatchNorm and dropout layer in eval mode (no
    batch-dependent layer left), so joint and separate passes compute the same numbers only if
    each call site splits the outputs as before."""
    cfg = tiny_method(name, method={"streams": streams, **method}, train={"init_from": None})
    torch.manual_seed(0)
    model = build_model(cfg.model, NUM_CLASSES)
    gen = torch.Generator().manual_seed(0)
    m = build_method(cfg, REGISTRY[name], model, NUM_CLASSES, ("a", "b", "c"), "cpu", gen)
    m.train()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm | torch.nn.Dropout2d):
            mod.eval()
        if isinstance(mod, torch.nn.Dropout):
            mod.eval()
    lab, unl = _batches()
    if amp:
        m.to(memory_format=torch.channels_last)
        lab = {**lab, "image": lab["image"].contiguous(memory_format=torch.channels_last)}
        unl = {"image": unl["image"].contiguous(memory_format=torch.channels_last)}
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = m.training_step(lab if labeled else None, unl, Clock(2, 0, 2, 8))
    return {k: float(v.detach()) for k, v in out.items()}


CASES = [(n, True, {}) for n in STREAMS] + [
    ("gmi", True, {"teacher": True}),
    ("gmi", False, {"w_ce": 0.0}),
    ("gmi", False, {"w_ce": 0.0, "teacher": True}),
]


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp_channels_last"])
@pytest.mark.parametrize(("name", "labeled", "extra"), CASES)
def test_separate_streams_split_the_outputs_as_the_joint_pass_does(
    name: str, labeled: bool, extra: dict, amp: bool, tiny_method
) -> None:
    """Without batch-dependent layers both modes give every loss part the same value: labeled
    outputs first, unlabeled after (consistency's and gmi's [x, T(x)] order, gmi's
    ``(logits, taps)`` with and without a labeled batch, gmi's enhanced teacher)."""
    joint = _parts(tiny_method, name, "joint", labeled, amp, **extra)
    separate = _parts(tiny_method, name, "separate", labeled, amp, **extra)
    assert joint.keys() == separate.keys() and len(joint) > 2
    tol = 2e-2 if amp else 1e-5
    for k in joint:
        assert separate[k] == pytest.approx(joint[k], rel=tol, abs=tol), k
