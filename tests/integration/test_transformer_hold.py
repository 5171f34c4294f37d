"""A bad payload holds its symbol, not the pipeline. Real processes over ipc://.

The fake upstream serves EUR-USD 2026-01-07 once as well-formed JSON with invalid bars
(highs and lows swapped). The transformer rejects it whole, names symbol/side/day/field,
stores nothing from it and holds EUR-USD (later days wait); USD-JPY keeps flowing. The
downloader's re-fetch then finds a good (changed) version of the day, the transformer
releases the stream and processes the held days in journal order, so the final store is
the decoding of every valid journal record in order — as if the bad payload never came.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from barstream.services.aggregator.aggregate import merge
from barstream.shared.record import RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS
from tests.support.pipeline import Pipeline, decode_journal, pipeline, wait_caught_up
from tests.support.wait import wait_for

BAD_DAY = dt.date(2026, 1, 7)


def _journal(p: Pipeline, symbol: str) -> np.ndarray:
    path = p.root / "data" / "downloader" / symbol / "BID" / "fetch.bars"
    with Store.open(path, writable=False) as s:
        return s.snapshot()


@pytest.mark.timeout(120)
def test_bad_payload_holds_one_symbol_until_a_good_version(tmp_path: Path, ipc_dir: Path) -> None:
    symbols = ["EUR-USD", "USD-JPY"]
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=symbols,
        sides=["BID"],
        start_date=dt.date(2026, 1, 5),
        end_date=None,
    ) as p:
        p.write_config(live_poll_interval_s=0.2, refetch_days=4, refetch_interval_s=1.5)
        spec = f"corrupt:*/EUR-USD/BID/{BAD_DAY.year}/{BAD_DAY.month}/{BAD_DAY.day}:count=1"
        p.start_fake("--start", "2026-01-09T12:00:00", "--speed", "1", "--fault", spec)
        for name in ("downloader", "transformer", "aggregator"):
            p.start(name)

        log = p.root / "transformer.log"
        wait_for(
            lambda: "holding EUR-USD/BID/fetch" in log.read_text(),
            30,
            what="the hold",
            on_timeout=lambda: p.log_tail("transformer"),
        )
        text = log.read_text()
        assert "EUR-USD/BID/2026-01-07" in text and "highs" in text, (
            "the error must name where and which field"
        )
        wait_for(
            lambda: "released EUR-USD/BID/fetch" in log.read_text(),
            30,
            what="the release",
            on_timeout=lambda: p.log_tail("transformer"),
        )

        p.freeze_clock()
        wait_caught_up(p, [("transformer", "downloader"), ("aggregator", "transformer")], 60)
        p.kill("downloader", signal.SIGTERM)
        # Not a wait: the services downstream must outlive their upstream's exit; this is
        # the time a crash on the lost connection would take to show.
        time.sleep(0.5)
        for name in ("transformer", "aggregator"):
            assert p.procs[name].poll() is None, f"{name} died:\n{p.log_tail(name)}"
            p.kill(name, signal.SIGTERM)
            assert p.procs[name].returncode == 0, p.log_tail(name)

        for symbol in symbols:
            journal = _journal(p, symbol)
            rejected: list[int] = []
            expected = decode_journal(p.root / "data", symbol, "BID", journal, rejected=rejected)
            assert len(rejected) == (1 if symbol == "EUR-USD" else 0), (
                f"{symbol}: {len(rejected)} bad payloads in the journal"
            )
            got = p.store_records("transformer", f"{symbol}/BID/days")
            assert got.tobytes() == expected.tobytes(), (
                f"{symbol}: transformer store is not the valid journal decoded"
            )
            assert (got["low"] <= got["high"]).all(), "an invalid bar was stored"
            _, m1 = merge(np.zeros(0, RECORD_DTYPE), got, 0)
            assert p.store_records("aggregator", f"{symbol}/BID/1m").tobytes() == m1.tobytes()
            days = set((m1["ts_ms"] // DAY_MS).tolist())
            assert (BAD_DAY - dt.date(1970, 1, 1)).days in days, (
                f"{symbol}: the held day is missing"
            )
