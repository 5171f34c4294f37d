"""Ingest under live conditions, real processes over ipc://: the fake Dukascopy server with a
simulated clock (20 simulated minutes per second) → downloader → transformer.

A week of history, a 503 storm absorbed by retries within the request budget, a live day
re-polled as its minutes form and then finalised when the simulated day ends, and a past day
revised upstream while the pipeline runs. At the end the transformer's store must equal what
decoding the journal's responses directly gives (the same bodies, in journal order)."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import body_digest
from barstream.services.transformer.transform import decode_candles
from barstream.shared.record import (
    FLAG_REVISED,
    JOURNAL_DAY,
    JOURNAL_GAP,
    JOURNAL_LIVE,
    RECORD_DTYPE,
)
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS
from tests.support.pipeline import Pipeline, pipeline, wait_caught_up

START = dt.date(2026, 1, 7)
REVISED_DAY = dt.date(2026, 1, 12)
RATE = 40.0
BURST = 10


def _control(p: Pipeline, path: str, payload: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{p.fake_port}/_control/{path}",
        data=json.dumps(payload).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


def _stats(p: Pipeline) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{p.fake_port}/_control/stats", timeout=5) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


def _journal(p: Pipeline, key: str) -> np.ndarray:
    symbol, side, tf = key.split("/")
    with Store.open(
        p.root / "data" / "downloader" / symbol / side / f"{tf}.bars", writable=False
    ) as s:
        return s.snapshot()


def _body(p: Pipeline, symbol: str, side: str, rec: np.void) -> bytes:
    """The response body a journal record stands for, found as the downloader finds it."""
    data = p.root / "data"
    digest = int(rec["digest"])
    day = dt.date(1970, 1, 1) + dt.timedelta(days=int(rec["ts_ms"]) // DAY_MS)
    if int(rec["kind"]) == JOURNAL_LIVE:
        return (data / "downloader" / "live" / f"{symbol}-{side}-{digest:016x}.json").read_bytes()
    body = RawCache(data / "raw", today=lambda: dt.date(9999, 1, 1)).get(symbol, side, day)
    if body is not None and body_digest(body) == digest:
        return body
    name = f"{symbol}-{side}-{day:%Y%m%d}.{digest:016x}.json"
    return (data / "raw" / "_versions" / symbol / side / name).read_bytes()


def _wait_history(p: Pipeline, symbols: list[str], timeout_s: float) -> None:
    """Until every symbol's journal holds its week of history (committed)."""
    first = (START - dt.date(1970, 1, 1)).days
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ok = all(
                set(range(first, first + 7))
                <= set((_journal(p, f"{s}/BID/fetch")["ts_ms"] // DAY_MS).tolist())
                for s in symbols
            )
        except Exception:  # the store does not exist yet
            ok = False
        if ok:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"history was not fetched within {timeout_s}s:\n{p.log_tail('downloader')}"
    )


@pytest.mark.timeout(180)
def test_live_day_revision_and_503_storm(tmp_path: Path, ipc_dir: Path) -> None:
    symbols, sides = ["EUR-USD", "USD-JPY"], ["BID"]
    with pipeline(
        tmp_path, ipc_dir, symbols=symbols, sides=sides, start_date=START, end_date=None
    ) as p:
        p.write_config(
            requests_per_second=RATE,
            burst=BURST,
            live_poll_interval_s=0.2,
            refetch_days=3,
            refetch_interval_s=1.0,
            gap_retry_interval_s=1.0,
            max_retries=8,
        )
        # Simulated 2026-01-14 22:00 UTC (a Wednesday), 20 simulated minutes per second:
        # the live day ends ~6 s in and 2026-01-15 starts forming.
        p.start_fake(
            "--start", "2026-01-14T22:00:00", "--speed", "1200", "--fault", "503:*:count=25"
        )
        began = time.monotonic()
        p.start("downloader")
        p.start("transformer")
        _wait_history(p, symbols, 60)  # the 503 storm delays it: retries with backoff
        _control(
            p,
            "faults",
            {
                "spec": f"revise:*/{REVISED_DAY.year}/{REVISED_DAY.month}/{REVISED_DAY.day}:count=1000000"
            },
        )
        time.sleep(6.0)  # the simulated day ends; the revision is found by the re-fetch
        p.freeze_clock()
        elapsed = time.monotonic() - began
        wait_caught_up(p, [("transformer", "downloader")], 60)
        p.kill("downloader", signal.SIGTERM)
        p.kill("transformer", signal.SIGTERM)
        assert p.procs["downloader"].returncode == 0, p.log_tail("downloader")
        assert p.procs["transformer"].returncode == 0, p.log_tail("transformer")

        stats = _stats(p)
        by_status = stats["by_status"]
        assert isinstance(by_status, dict)
        assert by_status.get("503", 0) == 25, f"the 503 storm was not served: {by_status}"
        total = stats["requests_total"]
        assert isinstance(total, int)
        assert total <= RATE * elapsed + BURST + 1, (
            f"{total} requests in {elapsed:.1f}s breaks the budget"
        )

        for symbol in symbols:
            journal = _journal(p, f"{symbol}/BID/fetch")
            kinds = journal["kind"]
            assert not (kinds == JOURNAL_GAP).any(), f"{symbol}: the 503 storm left a gap"
            days = journal["ts_ms"] // DAY_MS
            first_day = (START - dt.date(1970, 1, 1)).days
            finals = days[kinds == JOURNAL_DAY]
            assert set(range(first_day, first_day + 8)) <= set(finals.tolist()), (
                f"{symbol}: missing history days"
            )
            revised = (days == (REVISED_DAY - dt.date(1970, 1, 1)).days) & (
                (journal["flags"] & FLAG_REVISED) != 0
            )
            assert revised.any(), f"{symbol}: the revised day was not republished"
            assert kinds[-1] == JOURNAL_LIVE, f"{symbol}: the live day is not the journal's tail"
            live_day = int(days[-1])
            assert live_day == (dt.date(2026, 1, 15) - dt.date(1970, 1, 1)).days, (
                "the simulated day did not roll over"
            )
            assert live_day - 1 in finals.tolist(), (
                "the finished live day was not replaced by its final version"
            )

            # The transformer's store is the direct decoding of the journal, in order.
            parts = []
            for i, rec in enumerate(journal):
                if int(rec["kind"]) not in (JOURNAL_DAY, JOURNAL_LIVE):
                    continue
                parts.append(
                    decode_candles(
                        _body(p, symbol, "BID", rec),
                        symbol=symbol,
                        side="BID",
                        day_ms=int(rec["ts_ms"]),
                        live=int(rec["kind"]) == JOURNAL_LIVE,
                        src_offset=i,
                    )
                )
            expected = np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)
            got = p.store_records("transformer", f"{symbol}/BID/days")
            assert len(got) == len(expected), (
                f"{symbol}: {len(got)} records, expected {len(expected)}"
            )
            assert got.tobytes() == expected.tobytes(), (
                f"{symbol}: transformer store differs from direct decoding"
            )
