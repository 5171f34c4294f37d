"""Checkpoints: atomic save/load, absent and corrupt files."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from barstream.shared.checkpoint import (
    CHECKPOINT_VERSION,
    Checkpoint,
    CheckpointState,
    StoreMark,
    UpstreamMark,
)
from barstream.shared.errors import CheckpointCorrupt


def state(commits: int = 3) -> CheckpointState:
    return CheckpointState(
        service="aggregator",
        commits=commits,
        wall_ms=1_700_000_000_000,
        stores={"EUR-USD/BID/1m": StoreMark("ab" * 16, 100, 2, [(1, 50), (2, 90)])},
        upstream={"EUR-USD/BID/1m": UpstreamMark("cd" * 16, 420, 7)},
        state={"gaps": ["2024-01-02"]},
    )


def test_absent_is_none(tmp_path: Path) -> None:
    assert Checkpoint(tmp_path / "checkpoint.json").load() is None


def test_round_trip(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "checkpoint.json")
    cp.save(state())
    got = cp.load()
    assert got is not None
    assert msgspec.json.encode(got) == msgspec.json.encode(state())
    assert got.stores["EUR-USD/BID/1m"].rewinds == [(1, 50), (2, 90)]


def test_save_replaces_atomically_and_leaves_no_tmp(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "checkpoint.json")
    cp.save(state(1))
    cp.save(state(2))
    loaded = cp.load()
    assert loaded is not None and loaded.commits == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json"]


def test_leftover_tmp_from_a_crash_is_ignored(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path / "checkpoint.json")
    cp.save(state(1))
    (tmp_path / "checkpoint.json.tmp").write_bytes(b'{"service": "agg')  # torn tmp
    loaded = cp.load()
    assert loaded is not None and loaded.commits == 1
    cp.save(state(2))
    loaded = cp.load()
    assert loaded is not None and loaded.commits == 2


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "cannot parse"),
        (b"\x00\xff garbage", "cannot parse"),
        (b'{"service": "\xff\xfe", "commits": 1, "wall_ms": 0}', "cannot parse"),  # bad UTF-8
        (b'{"service": "a", "commits": 1', "cannot parse"),  # torn
        (b'{"service": "a", "commits": "x", "wall_ms": 0}', "cannot parse"),
        (b'{"service": "a", "commits": 1, "wall_ms": 0, "version": 9}', "version 9"),
        (
            b'{"service":"a","commits":1,"wall_ms":0,"stores":{"k":{"store_id":"x","length":-1,"generation":0}}}',
            "negative length",
        ),
        (
            b'{"service":"a","commits":1,"wall_ms":0,"upstream":{"k":{"store_id":"x","offset":-4,"generation":0}}}',
            "negative offset -4",
        ),
    ],
)
def test_corrupt_names_the_file(tmp_path: Path, raw: bytes, why: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(raw)
    with pytest.raises(CheckpointCorrupt, match=why) as e:
        Checkpoint(path).load()
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_version_constant() -> None:
    assert state().version == CHECKPOINT_VERSION == 1
