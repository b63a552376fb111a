"""Splits: disjoint by subject or scan, deterministic, sizes, nested labeled subsets, errors."""

from __future__ import annotations

import pytest

from segssl.config import SplitConfig
from segssl.data import DataError, make_split
from segssl.data.splits import labeled_count

# 100 ACDC-like patients, two scans each
SCANS = [(f"patient{p:03d}_{ph}", f"patient{p:03d}") for p in range(1, 101) for ph in ("ED", "ES")]


def test_subject_split_keeps_patients_together():
    s = make_split(SCANS, SplitConfig(sizes=(70, 10, 20)), 4, "acdc")
    assert s["sizes"] == [70, 10, 20]
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (140, 20, 40)
    subj = s["subjects"]
    assert not set(subj["train"]) & set(subj["val"])
    assert not set(subj["train"]) & set(subj["test"])
    assert not set(subj["val"]) & set(subj["test"])
    for key in ("train", "val", "test"):  # both frames of each patient in the same set
        assert sorted(s[key]) == sorted(f"{p}_{ph}" for p in subj[key] for ph in ("ED", "ES"))


def test_scan_split_is_the_bim_protocol():
    s = make_split(SCANS, SplitConfig(unit="scan", sizes=(175, 8, 17)), 1, "acdc")
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (175, 8, 17)
    sets = [set(s[k]) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == {sc for sc, _ in SCANS}
    # ED and ES frames count as separate scans: some patient is split across sets
    split_patients = {sc[:10] for sc in s["test"]} & {sc[:10] for sc in s["train"]}
    assert split_patients


def test_default_sizes_and_unused_units():
    s = make_split(SCANS, SplitConfig(), 1)
    assert s["sizes"] == [70, 10, 20]
    s = make_split(SCANS, SplitConfig(sizes=(52, 0, 20)), 1)  # Chaitanya: 52 / 20 volumes
    assert s["sizes"] == [52, 0, 20] and len(s["unused"]) == 2 * 28


def test_deterministic_and_seed_dependent():
    a = make_split(SCANS, SplitConfig(seed=1, sizes=(70, 10, 20)), 2)
    b = make_split(SCANS, SplitConfig(seed=1, sizes=(70, 10, 20)), 2)
    c = make_split(SCANS, SplitConfig(seed=2, sizes=(70, 10, 20)), 2)
    assert a == b and a["fingerprint"] == b["fingerprint"]
    assert a["test"] != c["test"] and a["fingerprint"] != c["fingerprint"]
    assert make_split(list(reversed(SCANS)), SplitConfig(seed=1, sizes=(70, 10, 20)), 2) == a


def test_labeled_subsets_are_nested():
    cfg = SplitConfig(seed=5, unit="scan", sizes=(175, 8, 17))
    sets = [make_split(SCANS, cfg, n)["labeled"] for n in (1, 2, 4, 8)]
    for small, big in zip(sets, sets[1:], strict=False):
        assert big[: len(small)] == small
    assert [len(x) for x in sets] == [1, 2, 4, 8]
    s = make_split(SCANS, cfg, 4)
    assert set(s["labeled"]) <= set(s["train"]) and s["unlabeled"] == s["train"]
    assert s["fingerprint"] != make_split(SCANS, cfg, 2)["fingerprint"]


def test_percentages():
    assert labeled_count("1.25%", 78) == 1
    assert labeled_count("5%", 140) == 7
    assert labeled_count("10%", 8) == 1
    assert labeled_count("100%", 8) == 8
    assert labeled_count("2.5%", 100) == 3  # 2.5 rounds half up
    s = make_split(SCANS, SplitConfig(sizes=(70, 10, 20)), "5%")
    assert s["labeled_count"] == 7 and len(s["labeled"]) == 7


def test_labeled_count_too_large():
    with pytest.raises(
        DataError,
        match=r"labeled_scans=9 asks for 9 labeled scans but the "
        r"training set has only 8 scans",
    ):
        make_split(SCANS[:20], SplitConfig(sizes=(4, 3, 3)), 9)


@pytest.mark.parametrize(
    "sizes,pattern",
    [
        ((90, 10, 10), r"sizes=\(90, 10, 10\) needs 110 subjects but the dataset has only 100"),
        ((0, 50, 50), r"the training set is empty"),
        ((10, -1, 5), r"sizes must be >= 0"),
    ],
)
def test_impossible_sizes(sizes, pattern):
    with pytest.raises(DataError, match=pattern):
        make_split(SCANS, SplitConfig(sizes=sizes), 1)


def test_list_files(tmp_path):
    (tmp_path / "train.txt").write_text("# training patients\npatient001\npatient002\n\n")
    (tmp_path / "test.txt").write_text("patient003\n")
    (tmp_path / "lab.txt").write_text("patient002_ES\n")
    files = {
        "train": str(tmp_path / "train.txt"),
        "test": str(tmp_path / "test.txt"),
        "labeled": str(tmp_path / "lab.txt"),
    }
    s = make_split(SCANS, SplitConfig(files=files), 2)
    assert s["source"] == "files"
    assert s["train"] == ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]
    assert s["val"] == [] and s["test"] == ["patient003_ED", "patient003_ES"]
    assert s["labeled"][0] == "patient002_ES" and len(s["labeled"]) == 2
    assert len(s["unused"]) == 194


def test_list_files_errors(tmp_path):
    (tmp_path / "train.txt").write_text("patient001\npatinet002\n")
    with pytest.raises(
        DataError,
        match=r"train.txt: unknown subject id 'patinet002' "
        r"\(did you mean 'patient002'\?\)",
    ):
        make_split(SCANS, SplitConfig(files={"train": str(tmp_path / "train.txt")}), 1)
    (tmp_path / "train.txt").write_text("patient001\n")
    (tmp_path / "val.txt").write_text("patient001\n")
    with pytest.raises(DataError, match=r"\['patient001'\] listed in both train and val"):
        make_split(
            SCANS,
            SplitConfig(
                files={"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")}
            ),
            1,
        )
    with pytest.raises(DataError, match=r"missing.txt: no such file"):
        make_split(SCANS, SplitConfig(files={"train": str(tmp_path / "missing.txt")}), 1)
    (tmp_path / "lab.txt").write_text("patient050_ED\n")
    with pytest.raises(DataError, match=r"'patient050_ED' is not a training scan"):
        make_split(
            SCANS,
            SplitConfig(
                files={"train": str(tmp_path / "train.txt"), "labeled": str(tmp_path / "lab.txt")}
            ),
            1,
        )
