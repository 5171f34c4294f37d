"""barstream verify: clean stores pass; hand-damaged stores fail with file + offset + what."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from barstream import cli
from barstream.shared.header import HEADER_SIZE, StoreMeta
from barstream.shared.record import JOURNAL_DTYPE, KIND_JOURNAL, RECORD_DTYPE, RECORD_SIZE
from barstream.shared.storeset import StoreSet
from barstream.shared.timeframe import DAY_MS
from barstream.verify import check_bars

T0 = 1_780_000_020_000 // 60_000 * 60_000


def bars(n: int, t0: int = T0) -> np.ndarray:
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ts_ms"] = t0 + np.arange(n) * 60_000
    base = 1.1 + np.arange(n) * 1e-4
    r["open"] = base
    r["close"] = base + 5e-5
    r["high"] = base + 2e-4
    r["low"] = base - 1e-4
    r["volume"] = 10.0
    r["src_offset"] = np.arange(n)
    r["src_count"] = 1
    return r


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data dir with a resampler 1m store (50 bars) and a downloader journal (3 days)."""
    root = tmp_path / "data"
    ss = StoreSet.open(root / "resampler", "resampler")
    ss.ensure(StoreMeta("EUR-USD", "BID", "1m", "utc")).append(bars(50))
    ss.touch("EUR-USD/BID/1m")
    ss.commit()
    ss.close()
    dl = StoreSet.open(root / "downloader", "downloader")
    j = np.zeros(3, dtype=JOURNAL_DTYPE)
    j["ts_ms"] = np.array([0, 1, 2]) * DAY_MS + 20_000 * DAY_MS
    j["kind"] = 1
    j["body_len"] = 100
    j["version"] = 1  # as journal.py writes them: first version, no upstream
    j["src_offset"] = -1
    dl.ensure(StoreMeta("EUR-USD", "BID", "fetch", kind=KIND_JOURNAL)).append(j)
    dl.touch("EUR-USD/BID/fetch")
    dl.commit()
    dl.close()
    return root


def store_file(root: Path) -> Path:
    return root / "resampler" / "EUR-USD" / "BID" / "1m.bars"


def poke(path: Path, offset: int, field: str, value: float | int) -> None:
    """Overwrite one field of one record in place (a hand-made fault)."""
    fmt, pos = {
        "ts_ms": ("<q", 0),
        "open": ("<d", 8),
        "high": ("<d", 16),
        "low": ("<d", 24),
        "close": ("<d", 32),
    }[field]
    with path.open("r+b") as f:
        f.seek(HEADER_SIZE + offset * RECORD_SIZE + pos)
        f.write(struct.pack(fmt, value))


def run_verify(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(["verify", "--data-dir", str(root), "-q"])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def test_clean_stores_pass(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    assert "2 stores, 53 records" in out and "ok" in out


def test_time_order_fault(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(data_dir)
    poke(path, 20, "ts_ms", T0 + 19 * 60_000)  # same time as record 19
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert f"FAULT {path}: record 20: ts_ms {T0 + 19 * 60_000} is not after" in out


def test_ohlc_fault(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(data_dir)
    poke(path, 7, "high", 1.0)  # below open/close
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert f"{path}: record 7: OHLC invariant low <= open,close <= high broken" in out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.5, 0.0])
def test_price_fault(data_dir: Path, capsys: pytest.CaptureFixture[str], value: float) -> None:
    path = store_file(data_dir)
    poke(path, 3, "close", value)
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert f"{path}: record 3: prices must be finite and > 0" in out


def test_header_fault(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(data_dir)
    with path.open("r+b") as f:
        f.write(b"GARBAGE!")
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert f"FAULT {path}: header:" in out and "bad magic" in out


def test_checkpoint_longer_than_file(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = store_file(data_dir)
    os.truncate(path, HEADER_SIZE + 40 * RECORD_SIZE + 10)  # 40 whole records + a torn one
    code, out = run_verify(data_dir, capsys)
    assert code == 1
    assert f"{path}: record 40: committed length 50 but the file holds only 40" in out


def test_checkpoint_store_id_mismatch(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = data_dir / "resampler" / "checkpoint.json"
    point = json.loads(ck.read_text())
    point["stores"]["EUR-USD/BID/1m"]["store_id"] = "00" * 16
    del point["crc32"]  # a hand edit drops the checksum (else: "checksum mismatch")
    ck.write_text(json.dumps(point))
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and "!= checkpoint's 0000" in out


def test_corrupt_checkpoint(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (data_dir / "downloader" / "checkpoint.json").write_text("{not json")
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and "checkpoint.json" in out and "cannot parse" in out


def test_journal_fault(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / "downloader" / "EUR-USD" / "BID" / "fetch.bars"
    with path.open("r+b") as f:
        f.seek(HEADER_SIZE + 1 * RECORD_SIZE)
        f.write(struct.pack("<q", 20_001 * DAY_MS + 5))
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and f"{path}: record 1: ts_ms is not a UTC midnight" in out


def test_missing_data_dir_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["verify", "--data-dir", str(tmp_path / "nope"), "-q"]) == 2


def test_day_versions_are_ordered_per_version() -> None:
    # the transformer's "days" store repeats a revised day later: order holds per version
    a = bars(5)
    b = bars(5)
    b["src_offset"] = 99
    both = np.concatenate([a, b])
    assert check_bars(both, "x", per_version=True) == []
    assert [f.offset for f in check_bars(both, "x")] == [5]
