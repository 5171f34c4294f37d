"""source.py and raw_cache.py pieces that need no server: URLs, digest, backoff, Retry-After,
the raw cache (final days, revised versions, live bodies)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from barstream.services.downloader import http_pool
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import (
    FetchResult,
    RequestBudget,
    RetryPolicy,
    body_digest,
    day_start_ms,
    day_url,
    live_url,
)
from barstream.shared.record import JOURNAL_DTYPE
from tests.conftest import REPO


def test_past_day_url_is_one_based_and_not_zero_padded() -> None:
    url = day_url("https://jetta.dukascopy.com", "EUR-USD", "BID", dt.date(2026, 7, 1))
    assert url == "https://jetta.dukascopy.com/v1/candles/minute/EUR-USD/BID/2026/7/1"
    assert day_url("http://h/", "DEU.IDX-EUR", "ASK", dt.date(2019, 1, 31)).endswith(
        "/v1/candles/minute/DEU.IDX-EUR/ASK/2019/1/31"
    )


def test_live_url_asks_from_the_utc_day_start() -> None:
    url = live_url("https://jetta.dukascopy.com", "EUR-USD", "BID", dt.date(2026, 7, 10))
    assert url == "https://jetta.dukascopy.com/v1/candles/minute/EUR-USD/BID?from=1783641600000"
    assert day_start_ms(dt.date(1970, 1, 2)) == 86_400_000


@pytest.mark.parametrize(("symbol", "side"), [("EUR-USD", "bid"), ("EUR/USD", "BID"), ("", "ASK")])
def test_bad_symbol_or_side_is_refused(symbol: str, side: str) -> None:
    with pytest.raises(ValueError):
        day_url("http://h", symbol, side, dt.date(2020, 1, 1))


def test_digest_matches_journal_field() -> None:
    body = b'{"timestamp":0}'
    expected = int.from_bytes(hashlib.blake2b(body).digest()[:8], "little")
    assert body_digest(body) == expected
    rec = np.zeros(1, dtype=JOURNAL_DTYPE)
    rec["digest"] = body_digest(body)
    assert rec.tobytes()[24:32] == hashlib.blake2b(body).digest()[:8]
    assert body_digest(body) != body_digest(body + b" ")


def test_backoff_is_full_jitter_within_the_exponential_cap() -> None:
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4.0)
    rng = random.Random(7)
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay_s(retry, rng) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= cap
        assert max(delays) > cap * 0.8  # jitter spreads over the whole range
    assert policy.delay_s(1, rng, retry_after_s=3.0) >= 3.0
    assert policy.delay_s(1, rng, retry_after_s=1e6) == policy.max_retry_after_s


def test_retry_after_parsing() -> None:
    assert http_pool.retry_after_s("7") == 7.0
    assert http_pool.retry_after_s(None) is None
    assert http_pool.retry_after_s("soon") is None
    future = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    parsed = http_pool.retry_after_s(future.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert parsed is not None and 25 <= parsed <= 31


def test_budget_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RequestBudget(0)
    with pytest.raises(ValueError):
        RequestBudget(1.0, burst=0)


def test_budget_allows_the_burst_then_paces() -> None:
    async def run() -> tuple[float, RequestBudget]:
        budget = RequestBudget(50.0, burst=5)
        began = time.monotonic()
        for _ in range(15):
            await budget.acquire()
        return time.monotonic() - began, budget

    elapsed, budget = asyncio.run(asyncio.wait_for(run(), 10))
    assert budget.requests_total == 15
    # the first five are the burst; the other ten wait (fewer only if this loop was starved)
    assert 1 <= budget.waits_total <= 10
    assert elapsed >= 10 / 50 * 0.9
    assert "requests=15" in repr(budget)


# --- raw cache --------------------------------------------------------------------------------


def cache(tmp_path: Path) -> RawCache:
    return RawCache(tmp_path / "raw", today=lambda: dt.date(2026, 7, 12))


def test_raw_cache_layout_and_round_trip(tmp_path: Path) -> None:
    c = cache(tmp_path)
    day = dt.date(2026, 7, 10)
    assert not c.has("EUR-USD", "BID", day) and c.get("EUR-USD", "BID", day) is None
    digest = c.put("EUR-USD", "BID", day, b'{"x":1}')
    path = tmp_path / "raw/EUR-USD/BID/2026/EUR-USD-BID-20260710.json"
    assert path.read_bytes() == b'{"x":1}'
    assert c.path("EUR-USD", "BID", day) == path
    assert c.has("EUR-USD", "BID", day) and c.get("EUR-USD", "BID", day) == b'{"x":1}'
    assert digest == body_digest(b'{"x":1}')
    c.put("EUR-USD", "BID", day, b'{"x":2}')  # a revision replaces the file whole
    assert c.get("EUR-USD", "BID", day) == b'{"x":2}'
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no tmp file left behind


def test_raw_cache_never_caches_the_current_or_a_future_day(tmp_path: Path) -> None:
    c = cache(tmp_path)
    for day in (dt.date(2026, 7, 12), dt.date(2026, 7, 13)):
        with pytest.raises(ValueError, match="never cached"):
            c.put("EUR-USD", "BID", day, b"{}")
    live = FetchResult("EUR-USD", "BID", dt.date(2026, 7, 1), "u", b"{}", 200, 1, 0.1, True)
    with pytest.raises(ValueError, match="live"):
        c.put_result(live)
    assert not (tmp_path / "raw").exists()


def test_raw_cache_lists_days_in_order(tmp_path: Path) -> None:
    c = cache(tmp_path)
    days = [dt.date(2025, 12, 31), dt.date(2024, 2, 29), dt.date(2026, 1, 1)]
    for day in days:
        c.put("XAU-USD", "ASK", day, b"{}")
    (c.path("XAU-USD", "ASK", days[0]).parent / "junk.txt").write_text("x")
    assert list(c.days("XAU-USD", "ASK")) == sorted(days)
    assert list(c.days("XAU-USD", "BID")) == []


def test_raw_cache_write_is_atomic_when_the_disk_refuses(tmp_path: Path) -> None:
    """A write that fails half way (a real EFBIG from RLIMIT_FSIZE, in a child process)
    leaves the old file intact and no tmp file behind."""
    c = cache(tmp_path)
    day = dt.date(2026, 7, 10)
    c.put("EUR-USD", "BID", day, b"old")
    child = textwrap.dedent(
        f"""
        import datetime as dt, resource, signal, sys
        from barstream.services.downloader.raw_cache import RawCache
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        c = RawCache({str(tmp_path / "raw")!r}, today=lambda: dt.date(2026, 7, 12))
        try:
            c.put("EUR-USD", "BID", dt.date(2026, 7, 10), b"n" * 5000)
        except OSError as exc:
            print("refused", exc.errno)
            sys.exit(0)
        sys.exit(3)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused")
    assert c.get("EUR-USD", "BID", day) == b"old"
    assert [p.name for p in c.path("EUR-USD", "BID", day).parent.iterdir()] == [
        "EUR-USD-BID-20260710.json"
    ]


def test_raw_cache_keeps_revised_versions_and_live_bodies(tmp_path: Path) -> None:
    live = tmp_path / "downloader" / "live"
    c = RawCache(tmp_path / "raw", today=lambda: dt.date(2026, 7, 12), live=live)
    day = dt.date(2026, 7, 10)
    old, new = b'{"v":1}', b'{"v":2}'
    c.put("EUR-USD", "BID", day, old)
    c.keep_version("EUR-USD", "BID", day, old)  # the day is about to be revised
    c.put("EUR-USD", "BID", day, new)
    kept = c.version_path("EUR-USD", "BID", day, body_digest(old))
    name = f"EUR-USD-BID-20260710.{body_digest(old):016x}.json"
    assert kept == tmp_path / "raw/_versions/EUR-USD/BID" / name and kept.read_bytes() == old
    assert list(c.days("EUR-USD", "BID")) == [day]  # versions are not cached days
    # a journal record's body, by digest: the final day, else its kept version
    assert c.body("EUR-USD", "BID", day, body_digest(new), live=False) == new
    assert c.body("EUR-USD", "BID", day, body_digest(old), live=False) == old
    assert c.body("EUR-USD", "BID", day, 12345, live=False) is None
    # live bodies: one file per digest, pruned to those still named
    a, b = b'{"live":1}', b'{"live":2}'
    for body in (a, b):
        c.put_live("EUR-USD", "BID", body_digest(body), body)
    assert c.live_path("EUR-USD", "BID", body_digest(a)) == (
        live / f"EUR-USD-BID-{body_digest(a):016x}.json"
    )
    assert c.body("EUR-USD", "BID", dt.date(2026, 7, 12), body_digest(a), live=True) == a
    c.prune_live([("EUR-USD", "BID", body_digest(b))])
    assert [p.name for p in live.iterdir()] == [f"EUR-USD-BID-{body_digest(b):016x}.json"]
    assert c.body("EUR-USD", "BID", dt.date(2026, 7, 12), body_digest(a), live=True) is None
    with pytest.raises(ValueError):
        c.version_path("EUR/USD", "BID", day, 1)
