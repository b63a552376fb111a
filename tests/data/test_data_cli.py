"""`segssl data synth | prepare | info` through typer's CliRunner."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from segssl.cli import app
from segssl.config import SplitConfig
from segssl.data.preprocess import load_manifest
from segssl.data.splits import make_split, save_split

runner = CliRunner()


def test_synth_prepare_info(tmp_path):
    root, cache = tmp_path / "pro", tmp_path / "cache"
    r = runner.invoke(
        app,
        [
            "data",
            "synth",
            "--dataset",
            "promise12",
            "--out",
            str(root),
            "--scans",
            "3",
            "--size",
            "32",
            "--seed",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in root.glob("Case0*.mhd")) == [
        "Case00.mhd",
        "Case00_segmentation.mhd",
        "Case01.mhd",
        "Case01_segmentation.mhd",
        "Case02.mhd",
        "Case02_segmentation.mhd",
    ]
    args = [
        "data",
        "prepare",
        "--dataset",
        "promise12",
        "--root",
        str(root),
        "--out",
        str(cache),
        "--spacing",
        "4.0",
        "--size",
        "32,32",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "built cache" in r.output
    m = load_manifest(cache)
    assert m["settings"]["spacing"] == [4.0, 4.0] and m["settings"]["size"] == [32, 32]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "reused cache" in r.output
    split = make_split(
        [(s["scan_id"], s["subject"]) for s in m["scans"]],
        SplitConfig(sizes=(2, 0, 1)),
        1,
        "promise12",
    )
    save_split(split, tmp_path / "split.json")
    r = runner.invoke(app, ["data", "info", str(cache), "--split", str(tmp_path / "split.json")])
    assert r.exit_code == 0, r.output
    assert f"scans: 3  slices: {m['num_slices']}  classes: Prostate" in r.output
    assert "train" in r.output and "labeled" in r.output


def test_bad_input_exits_non_zero_with_message(tmp_path):
    r = runner.invoke(app, ["data", "synth", "--dataset", "acdcc", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "did you mean 'acdc'" in r.output
    r = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--dataset",
            "acdc",
            "--root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 2 and "dataset root does not exist" in r.output
    r = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--dataset",
            "acdc",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "c"),
            "--size",
            "4",
        ],
    )
    assert r.exit_code == 2 and "size must be at least 8 x 8 pixels" in r.output
    r = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--dataset",
            "acdc",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "c"),
            "--spacing",
            "a,b",
        ],
    )
    assert r.exit_code == 2 and "--spacing 'a,b'" in r.output
    r = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--dataset",
            "acdc",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 2 and "no patientNNN folders found" in r.output
    r = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json: missing" in r.output
    (tmp_path / "split.json").write_text(json.dumps({"nope": 1}))
    assert not (tmp_path / "c").exists()
