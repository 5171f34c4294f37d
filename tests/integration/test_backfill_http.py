"""``barstream backfill`` against the fake upstream over real HTTP (issue 10 item 7):

- 1,000 day requests (4 symbols × 2 sides × 125 days) and the 4 instrument documents go
  over a handful of keep-alive TCP connections (the fake counts the connections it accepts),
- at the configured budget (100 req/s: the run's rate is within a few % of it),
- a real ``barstream backfill`` process killed with SIGKILL halfway and run again fetches no
  day twice: the only URLs asked twice are days that were in flight at the kill (at most the
  backfill's CONCURRENCY, none of them in the raw cache when it died),
- each instrument's history start (from its metadata document, asked once and cached under
  raw/_meta) is honoured: no request asks for a day before it,
- the progress bar shows the ETA of the budget before the first day is answered.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barstream.backfill import CONCURRENCY
from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.paths import real_data_dir
from barstream.services.downloader.instruments import meta_path
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import day_start_ms
from tests.support.ops import REPO, cli, write_config

TODAY = dt.date(2026, 6, 1)
START = dt.date(2026, 1, 1)
END = START + dt.timedelta(days=124)  # 125 days
SYMBOLS = ("EUR-USD", "GBP-USD", "USD-JPY", "XAU-USD")
RATE = 100.0
BURST = 5
#: GBP-USD's instrument document starts inside the range: its earlier days are never asked.
GBP_START = START + dt.timedelta(days=25)
EXTRA_SYMBOL = "EUR-JPY"  # 25 more days to make up for GBP-USD's skipped ones: 1,000 in all
_DAY_PATH = re.compile(r"^/v1/candles/minute/([^/]+)/(BID|ASK)/(\d+)/(\d+)/(\d+)$")
REAL = real_data_dir()
EUR_USD_DOC = REAL / "dukascopy-json" / "instrument-EUR-USD.json"


def _config(tmp_path: Path, base_url: str) -> Path:
    data = {
        "pipeline": {"data_dir": str(tmp_path / "data")},
        "downloader": {
            "base_url": base_url,
            "max_retries": 2,
            "requests_per_second": RATE,
            "burst": BURST,
            "timeout_s": 10.0,
        },
    }
    return write_config(tmp_path / "c.toml", data)


def _days_asked(by_path: dict[str, int]) -> dict[tuple[str, str, dt.date], int]:
    asked = {}
    for path, n in by_path.items():
        if m := _DAY_PATH.match(path):
            sym, side, y, mo, d = m.groups()
            asked[(sym, side, dt.date(int(y), int(mo), int(d)))] = n
    return asked


def _backfill_cmd(cfg: Path, start: dt.date, end: dt.date, symbols: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "barstream",
        "backfill",
        "-c",
        str(cfg),
        "--start",
        start.isoformat(),
        "--end",
        end.isoformat(),
        "--symbols",
        symbols,
        "--sides",
        "BID,ASK",
    ]


@pytest.mark.slow
def test_backfill_reuses_connections_holds_the_budget_and_resumes_after_kill_9(
    tmp_path: Path,
) -> None:
    clock = SimClock(day_start_ms(TODAY), speed=0.0)
    starts = {"GBP-USD": GBP_START, EXTRA_SYMBOL: END - dt.timedelta(days=24)}
    # generated data (the fake tiling HistData days serves ≈ 85 req/s on this machine, below
    # the budget: the fake would be what is measured); the recorded document: the next test
    with FakeUpstream(clock=clock, seed=3, real_dir=None, instrument_starts=starts) as up:
        cfg = _config(tmp_path, up.url)
        symbols = ",".join((*SYMBOLS, EXTRA_SYMBOL))
        expected = {
            (sym, side, day)
            for sym in (*SYMBOLS, EXTRA_SYMBOL)
            for side in ("BID", "ASK")
            for day in (START + dt.timedelta(days=i) for i in range(125))
            if day >= starts.get(sym, START)
        }
        assert len(expected) == 1000
        stderr_path = tmp_path / "first.err"
        with open(stderr_path, "wb") as err:
            first = subprocess.Popen(
                _backfill_cmd(cfg, START, END, symbols), cwd=REPO, stderr=err, env=os.environ
            )
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and up.stats()["by_route"].get("day", 0) < 500:
                    assert first.poll() is None, stderr_path.read_text()
                    time.sleep(0.02)
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            finally:
                if first.poll() is None:
                    first.kill()
        assert first.returncode == -signal.SIGKILL
        raw = tmp_path / "data" / "raw"
        cache = RawCache(raw)
        at_kill = {
            (sym, side, day)
            for sym in (*SYMBOLS, EXTRA_SYMBOL)
            for side in ("BID", "ASK")
            for day in cache.days(sym, side)
        }
        asked_at_kill = _days_asked(up.requests_by_path())
        assert 450 <= len(at_kill) <= 600, len(at_kill)
        assert at_kill <= set(asked_at_kill)
        first_err = stderr_path.read_text()
        # the bar's first frame, before any day was answered: the budget's ETA for 1,000
        eta = round(1000 / RATE)
        assert f"0/1000 [00:00<?, ?day/s, budget 100 req/s, ETA 0:00:{eta:02d}" in first_err, (
            first_err[:2000]
        )

        began = time.monotonic()
        second = cli(
            "backfill",
            *_backfill_cmd(cfg, START, END, symbols)[4:],
            "-q",
            timeout_s=120,
        )
        wall = time.monotonic() - began
        assert second.returncode == 0, second.stderr
        stats = up.stats()
        by_path = up.requests_by_path()

    asked = _days_asked(by_path)
    # every day fetched, none before its symbol's history start
    assert set(asked) == expected, sorted(set(asked) ^ expected)[:10]
    assert all(day >= starts.get(sym, START) for sym, _, day in asked)
    # nothing fetched twice: a URL asked twice was in flight at the kill (never cached then)
    twice = {key for key, n in asked.items() if n > 1}
    assert all(n <= 2 for n in asked.values())
    assert len(twice) <= CONCURRENCY, sorted(twice)
    assert not twice & at_kill
    assert twice <= set(asked_at_kill) - at_kill
    # the instrument documents: each asked once (the second run read raw/_meta)
    for sym in (*SYMBOLS, EXTRA_SYMBOL):
        assert by_path[f"/v1/instruments/{sym}"] == 1
        assert meta_path(raw, sym).is_file()
    # connection reuse: 1,000 + requests over a handful of TCP connections (both runs)
    total = sum(by_path.values())
    assert total >= 1000 + len(twice)
    assert stats["connections_total"] <= 3 * CONCURRENCY, stats
    # the second run held the budget: its requests at ≤ RATE (+ the burst), and near it
    line = next(ln for ln in second.stderr.splitlines() if " requests over " in ln)
    m = re.search(r"(\d+) requests over (\d+) connection\(s\), ([\d.]+) req/s", line)
    assert m is not None, line
    requests, conns, rate = int(m[1]), int(m[2]), float(m[3])
    assert requests == len(expected - at_kill)
    assert conns <= CONCURRENCY
    assert requests / wall <= RATE
    assert 0.85 * RATE <= rate <= RATE * 1.05 + BURST, line
    print(
        f"backfill: {total} requests in 2 runs over {stats['connections_total']} TCP "
        f"connections; resumed run: {requests} requests over {conns} connections at "
        f"{rate:.1f} req/s (budget {RATE:g}); asked twice (in flight at the kill): {len(twice)}"
    )


def test_backfill_asks_nothing_before_the_recorded_eur_usd_history_start(
    tmp_path: Path,
) -> None:
    if not EUR_USD_DOC.is_file():
        pytest.skip(f"no real data: {EUR_USD_DOC}")
    clock = SimClock(day_start_ms(TODAY), speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=REAL) as up:
        cfg = _config(tmp_path, up.url)
        run = cli(
            *_backfill_cmd(cfg, dt.date(2003, 5, 1), dt.date(2003, 5, 6), "EUR-USD")[3:], "-q"
        )
        by_path = up.requests_by_path()
    assert run.returncode == 0, run.stderr
    asked = _days_asked(by_path)
    # the document's first minute candle is 2003-05-04 19:00 UTC: days from the 4th only
    assert {day for _, _, day in asked} == {dt.date(2003, 5, d) for d in (4, 5, 6)}, asked
    assert by_path["/v1/instruments/EUR-USD"] == 1
    assert "6 before the history start (not asked)" in run.stderr, run.stderr
    doc = meta_path(tmp_path / "data" / "raw", "EUR-USD").read_bytes()
    assert doc == EUR_USD_DOC.read_bytes()
