"""barstream export: exact CSV / MT4 CSV text from a hand-built resampler store, MT4 server
time labels across the New York DST switches, read-only access, Parquet round trip; MT4 from a
utc-aligned store refused for timeframes off MT4's grid; where the bars went, on stderr; a
closed stdout pipe ends the command quietly."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from barstream import cli, export
from barstream.shared.header import StoreMeta
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.storeset import StoreSet
from tests.support.ops import REPO, free_port, pipeline_config, write_config


def ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


# (UTC open, MT4 server label). New York: EST (UTC-5) → MT4 GMT+2; EDT (UTC-4) → GMT+3.
# Spring forward 2026-03-08 07:00 UTC; fall back 2026-11-01 06:00 UTC.
BARS = [
    ("2026-03-06T21:00", "2026.03.06,23:00"),  # Friday before the switch, GMT+2
    ("2026-03-08T06:00", "2026.03.08,08:00"),  # 01:00 EST, the last hour before the jump
    ("2026-03-08T07:00", "2026.03.08,10:00"),  # 03:00 EDT: server time jumps 09:00 → 10:00
    ("2026-03-08T22:00", "2026.03.09,01:00"),  # Sunday evening open is server Monday
    ("2026-11-01T05:00", "2026.11.01,08:00"),  # 01:00 EDT
    ("2026-11-01T06:00", "2026.11.01,08:00"),  # 01:00 EST: the repeated hour
    ("2026-11-02T00:00", "2026.11.02,02:00"),  # GMT+2 again
]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    r = np.zeros(len(BARS) + 1, dtype=RECORD_DTYPE)
    r["ts_ms"] = [ms(t) for t, _ in BARS] + [ms("2026-11-02T01:00")]
    r["open"] = [1.08123, 1.0812, 1.5, 2000.0, 1.1, 149.123, 0.1 + 0.2, 1.2]
    r["high"] = [1.08201, 1.0813, 1.6, 2001.25, 1.2, 149.5, 0.4, 1.3]
    r["low"] = [1.081, 1.0811, 1.4, 1999.0, 1.0, 149.0, 0.2, 1.1]
    r["close"] = [1.082, 1.08125, 1.55, 2000.5, 1.15, 149.25, 0.3, 1.2]
    r["volume"] = [37.0, 12.5, 0.0, 1234.75, 1.0, 2.0, 3.0, 4.0]
    r["flags"][-1] = FLAG_PROVISIONAL  # the open bar
    ss = StoreSet.open(root / "resampler", "resampler")
    ss.ensure(StoreMeta("EUR-USD", "BID", "1h", "utc")).append(r)
    ss.touch("EUR-USD/BID/1h")
    ss.commit()
    ss.close()
    return root


def run(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = cli.main(["export", "EUR-USD", "1h", "--data-dir", str(data_dir), *args])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    return cap.out


def test_mt4_labels_across_dst() -> None:
    ts = np.array([ms(t) for t, _ in BARS], dtype=np.int64)
    dates, times = export.mt4_labels(ts)
    assert [f"{d},{t}" for d, t in zip(dates, times, strict=True)] == [m for _, m in BARS]


def test_mt4_format_exact(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(data_dir, capsys, "--format", "mt4")
    assert out == (
        "2026.03.06,23:00,1.08123,1.08201,1.081,1.082,37\n"
        "2026.03.08,08:00,1.0812,1.0813,1.0811,1.08125,12.5\n"
        "2026.03.08,10:00,1.5,1.6,1.4,1.55,0\n"
        "2026.03.09,01:00,2000,2001.25,1999,2000.5,1234.75\n"
        "2026.11.01,08:00,1.1,1.2,1,1.15,1\n"
        "2026.11.01,08:00,149.123,149.5,149,149.25,2\n"
        "2026.11.02,02:00,0.30000000000000004,0.4,0.2,0.3,3\n"
    )


def test_csv_format_exact_with_range(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run(
        data_dir,
        capsys,
        "--format",
        "csv",
        "--start",
        "2026-03-08T06:00",
        "--end",
        "2026-11-01T06:00",
    )
    assert out == (
        "time,open,high,low,close,volume,provisional\n"
        "2026-03-08T06:00:00Z,1.0812,1.0813,1.0811,1.08125,12.5,0\n"
        "2026-03-08T07:00:00Z,1.5,1.6,1.4,1.55,0,0\n"
        "2026-03-08T22:00:00Z,2000,2001.25,1999,2000.5,1234.75,0\n"
        "2026-11-01T05:00:00Z,1.1,1.2,1,1.15,1,0\n"
    )


def test_provisional_bar_only_on_request(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "2026-11-02T01:00:00Z" not in run(data_dir, capsys)
    assert "2026-11-02T01:00:00Z,1.2,1.3,1.1,1.2,4,1\n" in run(data_dir, capsys, "--provisional")


def test_export_is_read_only(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = data_dir / "resampler" / "EUR-USD" / "BID" / "1h.bars"
    before = path.read_bytes()
    os.chmod(path, 0o444)
    try:
        run(data_dir, capsys, "--format", "mt4", "--output", str(data_dir / "out.csv"))
    finally:
        os.chmod(path, 0o644)
    assert path.read_bytes() == before
    assert (data_dir / "out.csv").read_text().count("\n") == 7


def test_parquet_round_trip(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = data_dir / "bars.parquet"
    run(data_dir, capsys, "--format", "parquet", "--output", str(out))
    table = pq.read_table(out)
    assert table.column_names == [
        "ts_ms",
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "flags",
    ]
    assert table.column("ts_ms").to_pylist() == [ms(t) for t, _ in BARS]
    assert table.column("open").to_pylist()[6] == 0.1 + 0.2


def test_missing_store_fails_with_its_path(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["export", "XAU-USD", "1h", "--data-dir", str(data_dir)])
    assert code == 1
    assert "XAU-USD/BID/1h.bars" in capsys.readouterr().err


def store(root: Path, timeframe: str, alignment: str, n: int = 3) -> None:
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ts_ms"] = ms("2026-03-02T00:00") + np.arange(n, dtype=np.int64) * 86_400_000
    r["open"] = r["high"] = r["low"] = r["close"] = 1.25
    ss = StoreSet.open(root / "resampler", "resampler")
    ss.ensure(StoreMeta("EUR-USD", "BID", timeframe, alignment)).append(r)
    ss.touch(f"EUR-USD/BID/{timeframe}")
    ss.commit()
    ss.close()


@pytest.mark.parametrize("timeframe", ["4h", "1d", "1W", "1M"])
def test_mt4_from_a_utc_store_is_refused_off_the_hour_grid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeframe: str
) -> None:
    store(tmp_path, timeframe, "utc")
    args = ["export", "EUR-USD", timeframe, "--data-dir", str(tmp_path), "--format", "mt4"]
    assert cli.main(args) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert f"EUR-USD/BID/{timeframe} is utc-aligned" in cap.err
    assert 'resampler.alignment = "mt4"' in cap.err and "--allow-utc" in cap.err
    assert "1m … 1h" in cap.err  # which timeframes are fine
    assert cli.main([*args, "--allow-utc"]) == 0
    assert capsys.readouterr().out.count("\n") == 3


@pytest.mark.parametrize(("timeframe", "alignment"), [("1d", "mt4"), ("1W", "mt4"), ("30m", "utc")])
def test_mt4_export_of_an_mt4_store_or_an_intraday_utc_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], timeframe: str, alignment: str
) -> None:
    store(tmp_path, timeframe, alignment)
    args = ["export", "EUR-USD", timeframe, "--data-dir", str(tmp_path), "--format", "mt4"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.count("\n") == 3


def test_mt4_mismatch_names_exactly_the_timeframes_off_the_grid() -> None:
    fine = ["1m", "2m", "5m", "10m", "15m", "20m", "30m", "1h"]
    off = ["45m", "90m", "2h", "3h", "4h", "8h", "1d", "1W", "1M", "1Y"]
    for tf in fine:
        assert export.mt4_mismatch(StoreMeta("EUR-USD", "BID", tf, "utc")) is None, tf
    for tf in off:
        assert export.mt4_mismatch(StoreMeta("EUR-USD", "BID", tf, "utc")) is not None, tf
        assert export.mt4_mismatch(StoreMeta("EUR-USD", "BID", tf, "mt4")) is None, tf


def test_export_says_where_the_bars_went(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = data_dir / "resampler" / "EUR-USD" / "BID" / "1h.bars"
    run(data_dir, capsys, "--format", "csv")  # stdout
    assert cli.main(["export", "EUR-USD", "1h", "--data-dir", str(data_dir)]) == 0
    assert capsys.readouterr().err == f"export: wrote 7 bars of {src} to stdout\n"
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli.main(["export", "EUR-USD", "1h", "--data-dir", str(data_dir), "-o", "x.csv"]) == 0
    assert capsys.readouterr().err == f"export: wrote 7 bars of {src} to {here / 'x.csv'}\n"
    pytest.importorskip("pyarrow")
    assert (
        cli.main(["export", "EUR-USD", "1h", "--data-dir", str(data_dir), "--format", "parquet"])
        == 0
    )
    target = here / "EUR-USD-BID-1h.parquet"
    assert capsys.readouterr().err == f"export: wrote 7 bars of {src} to {target}\n"
    assert target.is_file()


def test_a_closed_stdout_pipe_ends_quietly(tmp_path: Path) -> None:
    """`barstream export … | head -1` and `barstream status … | head -1` exit 0, no traceback."""
    n = 50_000  # ~3 MB of CSV: far more than a pipe buffer
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ts_ms"] = ms("2026-01-05T00:00") + np.arange(n, dtype=np.int64) * 60_000
    r["open"] = r["high"] = r["low"] = r["close"] = 1.08123
    ss = StoreSet.open(tmp_path / "resampler", "resampler")
    ss.ensure(StoreMeta("EUR-USD", "BID", "1m", "utc")).append(r)
    ss.touch("EUR-USD/BID/1m")
    ss.commit()
    ss.close()
    export_cmd = ["export", "EUR-USD", "1m", "--data-dir", str(tmp_path)]
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    config = write_config(tmp_path / "c.toml", data)
    status_cmd = ["status", "-c", str(config), "--var", str(tmp_path / "var"), "--all"]
    for args, read_first in ((export_cmd, True), (status_cmd, False)):
        proc = subprocess.Popen(
            [sys.executable, "-m", "barstream", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        if read_first:  # head -1: one line, then gone
            assert proc.stdout.readline().startswith(b"time,open")
        proc.stdout.close()  # status: gone before the first byte
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
        assert code == 0, (args[0], code, err)
        assert "Traceback" not in err and "Broken pipe" not in err, err
        assert "Exception ignored" not in err, err
