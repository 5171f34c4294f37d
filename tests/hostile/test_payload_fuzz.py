"""Every payload the downloader can receive, served for real over HTTP on 127.0.0.1 by a
server the test controls (tests/support/hostile_http.py): good days (the fake upstream's
bodies) and each hostile kind — huge bodies, gzip/deflate bombs, slow drips, resets
mid-body, wrong Content-Length, truncated JSON, wrong types, garbage.

Shown: the downloader never crashes; a hostile answer is never returned as a body, so never
cached nor journaled; each is counted (``barstream_fetch_attempt_failures_total{reason}``,
``barstream_errors_total{kind="oversized_body"}``) and retried within ``max_retries + 1``
attempts; a day hostile at every attempt is journaled as a gap (retried later), a day
hostile once is taken from the next attempt; a drip or a silent peer costs one
``timeout_s`` per attempt; and peak RSS stays within (requests at once) × 3 ×
``max_body_bytes`` while bombs inflate to 256 MiB (2 GiB in the slow run, a real
downloader process at the default limit).

Seeded (``BARSTREAM_TEST_SEED``, else random; printed) and bounded: the fast part serves
every kind twice in the default run; the slow one a seeded random plan to a real process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import re
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream.fake.clock import SimClock
from barstream.fake.upstream import RECORDED, FakeUpstream
from barstream.services.downloader.fetcher import StreamState, not_candles
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.service import BATCH_BODY_BYTES, RECENT_BODY_BYTES, Downloader
from barstream.services.downloader.source import (
    FetchResult,
    HttpSource,
    RequestBudget,
    RetryPolicy,
    SourceSettings,
    day_start_ms,
    day_url,
)
from barstream.shared.config import from_dict
from barstream.shared.record import JOURNAL_DAY, JOURNAL_GAP
from barstream.shared.store import Store
from tests.support.hostile_http import KINDS, HostileServer
from tests.support.pipeline import REPO

TODAY = dt.date(2026, 3, 4)
START = dt.date(2025, 11, 3)
OVERSIZED = {
    "length_huge",
    "huge_chunked",
    "huge_close",
    "gzip_bomb",
    "gzip_multi_bomb",
    "deflate_bomb",
    "raw_deflate_bomb",
}
#: Requests read at once: asyncio's default thread pool on this machine (min(32, cores + 4)).
WORKERS = min(32, (os.cpu_count() or 1) + 4)
#: What one request may hold at its peak: the body as sent, the inflated bytes and their
#: join, each at most ``downloader.max_body_bytes``.
PER_REQUEST = 3
#: The fast run's downloader.max_body_bytes: a bomb inflates to 128 times it.
FAST_LIMIT = 2 << 20
#: Allocator and interpreter noise on top of that.
SLACK_MIB = 48


def _seed() -> int:
    seed = int(os.environ.get("BARSTREAM_TEST_SEED") or random.SystemRandom().getrandbits(32))
    print(f"payload fuzz seed {seed} (BARSTREAM_TEST_SEED={seed} repeats it)")
    return seed


def _kib(field: str, pid: str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert m is not None, f"no {field} in /proc/{pid}/status"
    return int(m.group(1))


def _reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    """The good bodies: the fake upstream's (not started: ``reply`` without HTTP)."""
    yield FakeUpstream(clock=SimClock(day_start_ms(TODAY) + 10 * 3_600_000, speed=0.0), seed=1)


def _path(symbol: str, day: dt.date) -> str:
    return day_url("", symbol, "BID", day)


def _config(root: Path, url: str, **downloader: object) -> dict[str, object]:
    return {
        "pipeline": {"data_dir": str(root / "data"), "symbols": ["EUR-USD"], "start_date": START},
        "downloader": {
            "base_url": url,
            "requests_per_second": 1000.0,
            "burst": 100,
            "timeout_s": 1.0,
            "max_retries": 2,
            **downloader,
        },
    }


def test_every_hostile_payload_is_refused_counted_and_bounded(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    rng = random.Random(_seed())
    kinds = list(KINDS)
    rng.shuffle(kinds)
    days = [START + dt.timedelta(days=i) for i in range(2 * len(kinds))]
    # each kind: once on a day hostile at every attempt (a gap), once on a day hostile
    # at its first attempt only (taken from the second)
    always = {_path("EUR-USD", d): k for d, k in zip(days[::2], kinds, strict=True)}
    once = {_path("EUR-USD", d): k for d, k in zip(days[1::2], kinds, strict=True)}

    def plan(path: str, n: int) -> str:
        return always.get(path) or (once[path] if n == 0 and path in once else "good")

    now_ms = day_start_ms(TODAY) + 3_600_000
    with HostileServer(plan, fake, server_now_ms=now_ms, seed=rng.getrandbits(32)) as server:
        cfg = _config(tmp_path, server.url, max_body_bytes=FAST_LIMIT)
        dl = Downloader(from_dict(cfg), serve_metrics=False)
        st: StreamState = dl.streams["EUR-USD/BID/fetch"]
        dl.fetcher.clock.observe(now_ms)
        rss_before = _kib("VmRSS")
        _reset_peak()

        async def fetch_all() -> list[FetchResult | str | None]:
            return await asyncio.wait_for(
                asyncio.gather(*(dl.fetcher.final(st, d) for d in days)), 120
            )

        try:
            results = asyncio.run(fetch_all())
            peak = _kib("VmHWM")
            for d, result in zip(days, results, strict=True):
                assert result is not None, f"{d}: not final by the upstream's clock"
                dl.fetcher.record_final(st, d, result)  # as the walk does, in date order
            dl.commit()
            journal = dl.stores.stores[st.key].snapshot()
            registry = dl.metrics.registry
        finally:
            dl.stores.close()
            dl.ctx.destroy(linger=0)
    growth_mib = (peak - rss_before) / 1024
    print(
        f"{sum(server.served.values())} answers ({server.served['good']} good); peak RSS "
        f"{peak / 1024:.0f} MiB, {growth_mib:+.0f} MiB over the {rss_before / 1024:.0f} MiB before"
    )
    cache = RawCache(tmp_path / "data" / "raw", today=lambda: TODAY)
    for d, result in zip(days, results, strict=True):
        path = _path("EUR-USD", d)
        good = fake.reply(path).body
        if path in always:
            kind = always[path]
            assert isinstance(result, str), f"{kind}: {d} was taken: {result!r:.200}"
            assert "gave up after 3 attempts" in result, f"{kind}: {result}"
            assert server.requests[path] == 3, f"{kind}: {server.requests[path]} requests"
            assert cache.get("EUR-USD", "BID", d) is None, f"{kind}: a hostile body was cached"
        else:
            kind = once[path]
            assert isinstance(result, FetchResult), f"{kind}: {d}: {result}"
            assert result.body == good and result.attempts == 2, f"{kind}: {d}"
            assert cache.get("EUR-USD", "BID", d) == good, f"{kind}: not the good body cached"
        if kind in OVERSIZED and isinstance(result, str):
            assert f"downloader.max_body_bytes = {FAST_LIMIT}" in result, result
            assert "EUR-USD/BID/" + d.isoformat() in result and "[http://" in result, result
    # journaled: a gap for every always-hostile day, the good body's day otherwise
    assert len(journal) == len(days)
    for d, rec in zip(days, journal, strict=True):
        want = JOURNAL_GAP if _path("EUR-USD", d) in always else JOURNAL_DAY
        assert int(rec["kind"]) == want, f"{d}: journal kind {int(rec['kind'])}"
    hostile = sum(n for k, n in server.served.items() if k != "good")
    failures = {
        s.labels["reason"]: s.value
        for m in registry.collect()
        if m.name == "barstream_fetch_attempt_failures"
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert sum(failures.values()) == hostile, (failures, server.served)
    oversized = registry.get_sample_value("barstream_errors_total", {"kind": "oversized_body"})
    assert oversized == sum(server.served[k] for k in OVERSIZED), (oversized, server.served)
    assert failures.get("oversized") == oversized
    assert failures.get("timeout", 0) >= 3 * 3, failures  # drip_body, drip_headers, silent
    bound = WORKERS * PER_REQUEST * FAST_LIMIT / (1 << 20) + SLACK_MIB
    assert growth_mib < bound, f"peak RSS grew {growth_mib:.0f} MiB (bound {bound:.0f} MiB)"


def test_the_real_corpus_passes_through_a_hostile_first_attempt(real_data: Path) -> None:
    """The recorded Dukascopy responses (a trading day, a Friday, an empty Saturday) are taken
    byte for byte — after a hostile first attempt of a seeded kind, gzipped or not."""
    rng = random.Random(_seed())
    real = FakeUpstream(
        clock=SimClock(day_start_ms(dt.date(2026, 7, 20)), speed=0.0), seed=1, real_dir=real_data
    )
    days = sorted(RECORDED)
    first = {_path(sym, day): rng.choice(KINDS) for sym, _, day in days}

    def plan(path: str, n: int) -> str:
        return first[path] if n == 0 else "good"

    now_ms = day_start_ms(dt.date(2026, 7, 20))
    with HostileServer(plan, real, server_now_ms=now_ms, seed=rng.getrandbits(32)) as server:
        for gz in (True, False):
            settings = SourceSettings(
                base_url=server.url,
                timeout_s=1.0,
                retry=RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02),
                gzip=gz,
            )
            src = HttpSource(settings, RequestBudget(1000.0, 100))
            for sym, side, day in days:
                server.requests.clear()
                # the downloader's own judgement of a final day (Fetcher._refuse)
                result = asyncio.run(
                    src.fetch_day(sym, side, day, refuse=lambda r: not_candles(r.body))
                )
                want = (real_data / "dukascopy-json" / RECORDED[(sym, side, day)]).read_bytes()
                assert result.body == want, f"{day} after {first[_path(sym, day)]}"
                assert result.attempts == 2 and not not_candles(result.body)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_downloader_process_survives_a_random_hostile_upstream(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """A real downloader process over 90 days of two symbols, each answer chosen at random
    (seeded): half hostile, 2 GiB bombs among them. It exits 0 after its bounded walk; its
    journal has each day as the good body or a gap, its raw cache only good bodies; its peak
    RSS (the kernel's, for that child) stays bounded."""
    seed = _seed()
    symbols = ["EUR-USD", "GBP-USD"]
    end = START + dt.timedelta(days=89)

    def plan(path: str, n: int) -> str:
        r = random.Random(f"{seed}:{path}:{n}")
        return r.choice(KINDS) if r.random() < 0.5 else "good"

    now_ms = day_start_ms(TODAY) + 3_600_000
    with HostileServer(plan, fake, server_now_ms=now_ms, seed=seed, bomb_mib=2048) as server:
        cfg = _config(tmp_path, server.url, end_date=end.isoformat())
        cfg["pipeline"]["symbols"] = symbols  # type: ignore[index]
        toml = tmp_path / "barstream.toml"
        toml.write_text(_toml(cfg, tmp_path))
        log = tmp_path / "downloader.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "barstream.services.downloader", "--config", str(toml)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            try:
                _, status, usage = _wait4(proc.pid, 480)
            finally:
                if proc.poll() is None and proc.returncode is None:
                    proc.kill()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    peak_mib = usage.ru_maxrss / 1024  # kB on Linux
    hostile = sum(n for k, n in server.served.items() if k != "good")
    print(f"{sum(server.served.values())} answers, {hostile} hostile; peak RSS {peak_mib:.0f} MiB")
    # a baseline + the default limit's per request + the bodies the service keeps on purpose
    # (the recent bodies it re-sends to a restarted transformer, the batch being built)
    kept_mib = (RECENT_BODY_BYTES + BATCH_BODY_BYTES) >> 20
    bound = 150 + WORKERS * PER_REQUEST * 16 + kept_mib + SLACK_MIB
    assert peak_mib < bound, f"the downloader peaked at {peak_mib:.0f} MiB (bound {bound} MiB)"
    cache = RawCache(tmp_path / "data" / "raw", today=lambda: TODAY)
    gaps = 0
    for symbol in symbols:
        path = tmp_path / "data" / "downloader" / symbol / "BID" / "fetch.bars"
        with Store.open(path, writable=False) as s:
            journal = s.snapshot()
        assert len(journal) == (end - START).days + 1
        for i, rec in enumerate(journal):
            day = START + dt.timedelta(days=i)
            good = fake.reply(_path(symbol, day)).body
            cached = cache.get(symbol, "BID", day)
            if int(rec["kind"]) == JOURNAL_GAP:
                gaps += 1
                assert cached is None, f"{symbol} {day}: a gap with a cached body"
                assert server.requests[_path(symbol, day)] == 3
            else:
                assert int(rec["kind"]) == JOURNAL_DAY
                assert cached == good, f"{symbol} {day}: the cached body is not the good one"
                assert int(rec["body_len"]) == len(good)
    assert gaps == text.count("recorded as a gap"), "a gap that was not logged"
    assert gaps > 0 and np.isfinite(gaps)


def _wait4(pid: int, timeout_s: float) -> tuple[int, int, resource.struct_rusage]:
    """``os.wait4`` for one child, bounded: its exit status and its own resource usage."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return got, status, usage
        time.sleep(0.2)
    raise AssertionError(f"the downloader did not finish within {timeout_s:.0f} s")


def _toml(cfg: dict[str, object], root: Path) -> str:
    p = cfg["pipeline"]
    d = cfg["downloader"]
    assert isinstance(p, dict) and isinstance(d, dict)
    lines = [
        "[pipeline]",
        f'data_dir = "{p["data_dir"]}"',
        "symbols = [" + ", ".join(f'"{s}"' for s in p["symbols"]) + "]",
        f"start_date = {START.isoformat()}",
        "",
        "[downloader]",
        f'base_url = "{d["base_url"]}"',
        "requests_per_second = 1000.0",
        "burst = 100",
        "timeout_s = 1.0",
        "max_retries = 2",
        f"end_date = {d['end_date']}",
        "",
        "[downloader.endpoints]",
        f'feed = "ipc://{root}/dl-feed"',
        "metrics_port = 0",
    ]
    return "\n".join(lines) + "\n"
