"""Shared fixtures: where the real data lives, short ipc paths, temp stores."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("BARSTREAM_REAL_DATA", REPO.parent / "shared" / "data" / "real"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real Dukascopy/HistData files; skips the test when it is absent."""
    if not (REAL_DATA / "manifest.csv").is_file():
        pytest.skip(
            f"real data folder {REAL_DATA} is absent (needs ../shared/data/real beside the repo)"
        )
    return REAL_DATA


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short temp dir for ipc:// endpoints (unix socket paths are limited to ~107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="bs-", dir="/tmp") as d:
        yield Path(d)
