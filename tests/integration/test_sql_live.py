"""SQL and DataFrames over the gateway's stores of a live pipeline (real processes, a fast
simulated clock): queries found through the configuration read while the gateway rewrites
its provisional bars and see committed states only — time strictly increasing, only the
last bar provisional — and, once the pipeline stopped, equal the gateway's stores exactly
(``barstream sql`` as a process, and ``barstream.frames``)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from barstream import frames, sql
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.store import Store
from tests.support.ops import cli
from tests.support.pipeline import pipeline, wait_caught_up
from tests.support.wait import wait_for

QUERY_S = 4.0  # how long queries run against the live stores


def check_committed_state(table_ts: list[int], provisional: list[bool], what: str) -> None:
    ts = np.asarray(table_ts, dtype=np.int64)
    assert len(ts) > 0, what
    assert (np.diff(ts) > 0).all(), f"{what}: time not strictly increasing"
    assert not any(provisional[:-1]), f"{what}: a provisional bar before the last"


@pytest.mark.timeout(180)
def test_queries_over_a_live_gateway(tmp_path: Path, ipc_dir: Path) -> None:
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID"],
        start_date=dt.date(2026, 1, 12),
        end_date=None,
        timeframes=["5m", "1h"],
    ) as p:
        cfg = p.write_config(live_poll_interval_s=0.1, refetch_days=0)
        p.start_fake("--start", "2026-01-14T20:30:00", "--speed", "300")
        for name in ("gateway", "resampler", "aggregator", "transformer", "downloader"):
            p.start(name)
        gw_1m = tmp_path / "data/gateway/EUR-USD/BID/1m.bars"
        live_ms = int(dt.datetime(2026, 1, 14, 20, 40, tzinfo=dt.UTC).timestamp() * 1000)

        def live() -> bool:
            if not gw_1m.exists():
                return False
            recs = p.store_records("gateway", "EUR-USD/BID/1m")
            return len(recs) > 0 and int(recs["ts_ms"][-1]) >= live_ms

        wait_for(live, 90, what="live minutes in the gateway's 1m store")
        with Store.open(gw_1m, writable=False) as reader:
            generation0 = reader.published().generation
        queries = 0
        deadline = time.monotonic() + QUERY_S
        while time.monotonic() < deadline:  # bounded by the clock
            for tf in ("1m", "5m", "1h"):
                t = frames.read_arrow(
                    "EUR-USD",
                    "BID",
                    tf,
                    config=cfg,
                    columns=["ts_ms", "provisional"],
                    batch_rows=97,
                )
                check_committed_state(
                    t.column("ts_ms").to_pylist(), t.column("provisional").to_pylist(), tf
                )
            result = sql.run(
                "SELECT count(*) = count(DISTINCT ts_ms), count(*) FILTER (WHERE provisional) "
                "<= 1 FROM bars('EUR-USD', 'BID', '1m')",
                config=cfg,
                batch_rows=97,
            )
            assert result is not None
            assert list(result.read_all().to_pylist()[0].values()) == [True, True]
            queries += 1
        with Store.open(gw_1m, writable=False) as reader:
            rewrites = reader.published().generation - generation0
        print(f"{queries} query rounds while the gateway committed {rewrites} rewrites")
        assert queries >= 3
        assert rewrites > 0, "the gateway rewrote no committed bar while the queries ran"

        p.freeze_clock()
        wait_caught_up(
            p,
            [
                ("transformer", "downloader"),
                ("aggregator", "transformer"),
                ("resampler", "aggregator"),
                ("gateway", "resampler"),
            ],
            90,
        )
        for name in ("downloader", "transformer", "aggregator", "resampler", "gateway"):
            p.kill(name, signal.SIGTERM)
        for tf in ("1m", "5m", "1h"):
            store = p.store_records("gateway", f"EUR-USD/BID/{tf}")
            table = frames.read_arrow("EUR-USD", "BID", tf, config=cfg)
            for f in ("ts_ms", "open", "high", "low", "close", "volume", "flags"):
                assert np.array_equal(table.column(f).to_numpy(), store[f]), (tf, f)
        m1 = p.store_records("gateway", "EUR-USD/BID/1m")
        assert m1["flags"][-1] & FLAG_PROVISIONAL, "the live minute should be provisional"
        done = cli(
            "sql",
            "SELECT ts_ms, close, provisional FROM bars('EUR-USD','BID','1m') ORDER BY ts_ms",
            "-c",
            str(cfg),
            "-f",
            "csv",
        )
        assert done.returncode == 0, done.stderr
        rows = list(csv.reader(io.StringIO(done.stdout)))[1:]
        assert [int(r[0]) for r in rows] == m1["ts_ms"].tolist()
        assert [float(r[1]) for r in rows] == m1["close"].tolist()
        assert [r[2] for r in rows][-1] == "true"
