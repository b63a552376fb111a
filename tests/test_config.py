"""Config validation: unknown keys with their paths, ranges, overrides, hashing, flattening."""

from __future__ import annotations

import pytest
from pydantic import Field

from segssl import methods
from segssl.config import (
    ConfigError,
    MethodConfig,
    apply_overrides,
    canonical_json,
    config_hash,
    flatten,
    load_run_config,
    parse_run_config,
)


class _Dummy:
    class Config(MethodConfig):
        name: str = "dummy"
        alpha: float = Field(0.5, ge=0.0, le=1.0)


@pytest.fixture(autouse=True)
def dummy_method(monkeypatch):
    monkeypatch.setitem(methods.REGISTRY, "dummy", _Dummy)


def base() -> dict:
    return {
        "method": {"name": "dummy"},
        "data": {"preprocess": {"size": [64, 64]}},
        "augment": {"crop": 32},
    }


def test_valid_config_builds_sections():
    cfg = parse_run_config(base())
    assert cfg.method.alpha == 0.5
    assert cfg.data.preprocess.size == (64, 64)


def test_unknown_key_names_its_path():
    raw = base()
    raw["data"]["preprocess"]["sizee"] = [1, 2]
    with pytest.raises(ConfigError, match=r"data\.preprocess\.sizee: unknown key"):
        parse_run_config(raw, source="x.yaml")


def test_unknown_method_lists_known_names_and_suggests():
    raw = base()
    raw["method"] = {"name": "dumy"}
    with pytest.raises(ConfigError) as exc:
        parse_run_config(raw)
    assert "did you mean 'dummy'" in str(exc.value)
    assert "known methods:" in str(exc.value)


def test_method_key_errors_and_ranges():
    raw = base()
    raw["method"]["alpha"] = 1.5
    with pytest.raises(ConfigError, match=r"method\.alpha"):
        parse_run_config(raw)
    raw["method"] = {"name": "dummy", "beta": 1}
    with pytest.raises(ConfigError, match=r"method\.beta: unknown key"):
        parse_run_config(raw)


def test_crop_larger_than_image_is_refused():
    raw = base()
    raw["augment"]["crop"] = 128
    with pytest.raises(ConfigError, match="augment.crop=128 is larger"):
        parse_run_config(raw)


@pytest.mark.parametrize("size", [[72, 64], [64, 72]])
def test_every_side_of_an_uncropped_training_image_must_divide_by_the_down_sampling(size):
    """Without a crop the network trains on whole slices (no padding, unlike evaluation): a
    longer side that is not a multiple of the U-Net's 16 failed at the first skip connection
    (only the shorter side was checked), and a method's meta-device shape check raised torch's
    RuntimeError instead of a config error."""
    for method in ({"name": "baseline"}, {"name": "contrast_local", "blocks": 1}):
        raw = {**base(), "method": method, "data": {"preprocess": {"size": size}}}
        raw["augment"] = {"crop": 0}
        with pytest.raises(ConfigError, match=r"the training image side 72 must be divisible by "
                           r"16 .* data.preprocess.size=\[\d+, \d+\]"):  # fmt: skip
            parse_run_config(raw)
    ok = {**base(), "data": {"preprocess": {"size": [80, 64]}}, "augment": {"crop": 0}}
    assert parse_run_config(ok).training_size() == (80, 64)


@pytest.mark.parametrize("value", [0, "0%", "150%", "abc", True])
def test_labeled_scans_bad_values(value):
    raw = base()
    raw["data"]["labeled_scans"] = value
    with pytest.raises(ConfigError, match="data.labeled_scans"):
        parse_run_config(raw)


def test_labeled_scans_percentage_ok():
    raw = base()
    raw["data"]["labeled_scans"] = "1.25%"
    assert parse_run_config(raw).data.labeled_scans == "1.25%"


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "method: {name: dummy}\ndata: {preprocess: {size: [64, 64]}}\naugment: {crop: 32}\n"
    )
    cfg = load_run_config(path, ["method.alpha=0.25", "train.epochs=3", "data.target=lv"])
    assert (cfg.method.alpha, cfg.train.epochs, cfg.data.target) == (0.25, 3, "lv")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


def test_hash_is_canonical():
    a = {"b": 1.0, "a": [1, 2.5]}
    b = {"a": [1, 2.5], "b": 1}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({"a": [1, 2.5], "b": 2})
    cfg = parse_run_config(base())
    assert config_hash(cfg) == config_hash(parse_run_config(base()))


def _without_schedule(data: dict) -> dict:
    """A config dump as it was before ``optim.schedule`` (and ``data.preprocess.window``,
    ``train.amp_dtype``, ``train.grad_scaler``) existed."""
    optim = {k: v for k, v in data["optim"].items() if k != "schedule"}
    optim["extra"] = {
        n: {k: v for k, v in o.items() if k != "schedule"} for n, o in optim["extra"].items()
    }
    pre = {k: v for k, v in data["data"]["preprocess"].items() if k != "window"}
    train = {k: v for k, v in data["train"].items() if k not in ("amp_dtype", "grad_scaler")}
    return {**data, "optim": optim, "data": {**data["data"], "preprocess": pre}, "train": train}


def test_a_field_added_later_keeps_keys_at_its_default():
    from segssl.orchestrate.plan import trial_key

    raw = {**base(), "optim": {"extra": {"disc": {"lr": 1e-4}}}}
    cfg = parse_run_config(raw)
    old = _without_schedule(cfg.model_dump(mode="json"))
    # keys, hashes and the resume check read the config as it was before the field existed
    assert canonical_json(cfg) == canonical_json(old)
    assert trial_key(cfg, None) == config_hash({"config": old, "parent": None})
    explicit = parse_run_config(apply_overrides(raw, ["optim.schedule=cosine"]))
    assert trial_key(explicit, None) == trial_key(cfg, None)
    # another value is another trial, and the recorded parameters always show the field
    const = parse_run_config(apply_overrides(raw, ["optim.schedule=constant"]))
    assert trial_key(const, None) != trial_key(cfg, None)
    assert '"schedule":"constant"' in canonical_json(const)
    assert flatten(cfg)["optim.schedule"] == "cosine"
    assert flatten(cfg)["optim.extra.disc.schedule"] == "cosine"
    with pytest.raises(ConfigError, match="optim.schedule"):
        parse_run_config(apply_overrides(raw, ["optim.schedule=step"]))


def test_amp_dtype_and_grad_scaler_keep_keys_at_their_defaults():
    """``train.amp_dtype`` and ``train.grad_scaler`` came after trial keys were published: at
    their defaults the keys are those computed without them; other values are other trials."""
    from segssl.orchestrate.plan import trial_key

    for amp in ("auto", "on"):
        raw = {**base(), "train": {"amp": amp}}
        cfg = parse_run_config(raw)
        old = _without_schedule(cfg.model_dump(mode="json"))
        assert "amp_dtype" not in old["train"] and "grad_scaler" not in old["train"]
        assert canonical_json(cfg) == canonical_json(old)
        assert trial_key(cfg, None) == config_hash({"config": old, "parent": None})
        assert flatten(cfg)["train.amp_dtype"] == "float16"
        assert flatten(cfg)["train.grad_scaler"] == "stock"
    on = parse_run_config({**base(), "train": {"amp": "on"}})
    for extra in ({"amp_dtype": "bfloat16"}, {"grad_scaler": "sync_free"}):
        other = parse_run_config({**base(), "train": {"amp": "on", **extra}})
        assert trial_key(other, None) != trial_key(on, None)


@pytest.mark.parametrize(
    ("train", "match"),
    [
        ({"amp_dtype": "bfloat16"}, "amp_dtype='bfloat16' takes effect only with amp: on"),
        ({"amp": "off", "grad_scaler": "sync_free"}, "grad_scaler='sync_free' takes effect only"),
        (
            {"amp": "on", "amp_dtype": "bfloat16", "grad_scaler": "sync_free"},
            "bfloat16 autocast uses no gradient scaler",
        ),
        ({"amp": "on", "amp_dtype": "half"}, "train.amp_dtype"),
        ({"amp": "on", "grad_scaler": "fused"}, "train.grad_scaler"),
    ],
)
def test_amp_settings_that_would_be_ignored_are_refused(train, match):
    with pytest.raises(ConfigError, match=match) as err:
        parse_run_config({**base(), "train": train}, source="x.yaml")
    assert "x.yaml" in str(err.value) and "train" in str(err.value)


def test_flatten_uses_dots():
    flat = flatten(parse_run_config(base()))
    assert flat["method.name"] == "dummy"
    assert flat["data.preprocess.size"] == [64, 64]
    assert flat["seed"] == 0
