"""`segssl data synth | prepare | info` through typer's CliRunner."""

from __future__ import annotations

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
        "-o",
        "spacing=[4.0, 4.0]",
        "-o",
        "size=[32,32]",
        "-o",
        "data.preprocess.clip=false",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "built cache" in r.output
    m = load_manifest(cache)
    assert m["settings"]["spacing"] == [4.0, 4.0] and m["settings"]["size"] == [32, 32]
    assert m["settings"]["clip"] is False
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


def _prepare_args(root, out, *extra: str) -> list[str]:
    return ["data", "prepare", "--dataset", "acdc", "--root", str(root), "--out", str(out), *extra]


def test_bad_input_exits_non_zero_with_message(tmp_path):
    r = runner.invoke(app, ["data", "synth", "--dataset", "acdcc", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "did you mean 'acdc'" in r.output
    out = tmp_path / "c"
    cases = [
        ((tmp_path / "none", out), "dataset root does not exist"),
        ((tmp_path, out, "-o", "size=[4,4]"), "size must be at least 8 x 8 pixels"),
        (
            (tmp_path, out, "-o", "slice_axis=diagonal"),
            "slice_axis: Input should be 'auto' or 'stored'",
        ),
        ((tmp_path, out, "-o", "spacing=a"), "spacing: Input should be a valid tuple"),
        ((tmp_path, out, "-o", "sizes=[32,32]"), "sizes: unknown key (did you mean 'size'?)"),
        ((tmp_path, out, "-o", "size"), "override 'size': expected key.path=value"),
        ((tmp_path, out), "no patientNNN folders found"),
    ]
    for args, message in cases:
        r = runner.invoke(app, _prepare_args(*args))
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    r = runner.invoke(app, ["data", "info", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json: missing" in r.output
    assert not out.exists()
