"""Small synthetic archives shared by the data tests (session-scoped, written once)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from segssl.data import synthesize

SIZES = {
    "acdc": (6, 48),
    "promise12": (3, 40),
    "msd-prostate": (3, 40),
    "msd-spleen": (3, 40),
    "mmwhs-ct": (3, 40),
    "mmwhs-mr": (3, 40),
}


@pytest.fixture(scope="session")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One synthetic archive per dataset (read-only for tests: copy before modifying)."""
    base = tmp_path_factory.mktemp("archives")
    out = {}
    for name, (scans, size) in SIZES.items():
        out[name] = synthesize(name, base / name, scans=scans, size=size, seed=3)
    return out


@pytest.fixture
def acdc_copy(archives: dict[str, Path], tmp_path: Path) -> Path:
    """A private, modifiable copy of the synthetic ACDC archive."""
    return Path(shutil.copytree(archives["acdc"], tmp_path / "acdc"))
