"""HttpSource against the fake upstream, for real over HTTP on 127.0.0.1: NotFound, retries of
every transient fault, giving up, the shared request budget, gzip and the control plane; the
downloader's fetch of a final day costs at most ``max_retries + 1`` requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import queue
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from barstream.fake.clock import SimClock
from barstream.fake.faults import Fault
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.fetcher import StreamState
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.service import Downloader
from barstream.services.downloader.source import (
    FetchResult,
    HttpSource,
    RequestBudget,
    RetryPolicy,
    SourceSettings,
    day_start_ms,
)
from barstream.services.transformer.transform import decode_candles
from barstream.shared.config import from_dict
from barstream.shared.errors import (
    HostUnresolved,
    NotFound,
    PayloadInvalid,
    SourceError,
    TransientSourceError,
)
from barstream.shared.metrics import STREAM_LABELS, stream_labels
from barstream.shared.record import FLAG_PROVISIONAL
from tests.conftest import REPO

T = TypeVar("T")
TODAY = dt.date(2026, 3, 4)  # a Wednesday
PAST = dt.date(2026, 3, 3)
FAST_RETRY = RetryPolicy(
    max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, max_retry_after_s=0.05
)


def run(coro: Awaitable[T], timeout_s: float = 30.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    clock = SimClock(day_start_ms(TODAY) + 10 * 3_600_000, speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=None) as up:
        yield up


def client(
    up: FakeUpstream,
    *,
    rate: float = 1000.0,
    burst: int = 100,
    retry: RetryPolicy = FAST_RETRY,
    timeout_s: float = 5.0,
    gzip: bool = True,
    **kw: Any,
) -> HttpSource:
    settings = SourceSettings(base_url=up.url, timeout_s=timeout_s, retry=retry, gzip=gzip, **kw)
    return HttpSource(settings, RequestBudget(rate, burst), rng=random.Random(1))


def check_day(result: FetchResult, *, live: bool = False) -> None:
    out = decode_candles(
        result.body,
        symbol=result.symbol,
        side=result.side,
        day_ms=day_start_ms(result.day),
        live=live,
        src_offset=0,
    )
    assert len(out) > 1000 or live


def test_fetch_day_returns_the_servers_body(fake: FakeUpstream) -> None:
    src = client(fake)
    result = run(src.fetch_day("EUR-USD", "BID", PAST))
    assert result.body == fake.day_body("EUR-USD", "BID", PAST)
    assert (result.status, result.attempts, result.live) == (200, 1, False)
    assert result.url == f"{fake.url}/v1/candles/minute/EUR-USD/BID/2026/3/3"
    assert result.elapsed_s > 0
    # the HTTP Date carries the simulated clock (to the second)
    assert result.server_ms is not None and abs(result.server_ms - fake.clock.now_ms()) <= 1000
    check_day(result)


def test_fetch_live_returns_today_so_far(fake: FakeUpstream) -> None:
    src = client(fake)
    first = run(src.fetch_live("EUR-USD", "BID", TODAY))
    fake.clock.advance(30 * 60_000)
    later = run(src.fetch_live("EUR-USD", "BID", TODAY))
    assert first.live and first.url.endswith(f"?from={day_start_ms(TODAY)}")
    a = decode_candles(
        first.body,
        symbol="EUR-USD",
        side="BID",
        day_ms=day_start_ms(TODAY),
        live=True,
        src_offset=0,
    )
    b = decode_candles(
        later.body,
        symbol="EUR-USD",
        side="BID",
        day_ms=day_start_ms(TODAY),
        live=True,
        src_offset=0,
    )
    assert len(b) >= len(a) + 25 and b["flags"][-1] & FLAG_PROVISIONAL


def test_gzip_is_requested_and_decoded(fake: FakeUpstream) -> None:
    zipped = run(client(fake).fetch_day("EUR-USD", "BID", PAST)).body
    plain = run(client(fake, gzip=False).fetch_day("EUR-USD", "BID", PAST)).body
    assert zipped == plain
    request = urllib.request.Request(
        f"{fake.url}/v1/candles/minute/EUR-USD/BID/2026/3/3", headers={"Accept-Encoding": "gzip"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert len(response.read()) < len(plain) / 2


def test_user_agent_is_descriptive(fake: FakeUpstream) -> None:
    run(client(fake).fetch_day("EUR-USD", "BID", PAST))
    assert fake.stats()["user_agents"] == {"barstream/0.1 (+https://github.com/barstream)": 1}


def test_http_404_is_not_found(fake: FakeUpstream) -> None:
    src = client(fake)
    with pytest.raises(NotFound) as info:
        run(src.fetch_day("NOPE-XXX", "BID", PAST))
    err = info.value
    assert (err.symbol, err.side, err.day) == ("NOPE-XXX", "BID", "2026-03-03")
    assert err.url.endswith("/NOPE-XXX/BID/2026/3/3") and "404" in str(err)
    assert src.attempts_total == 1  # never retried


def test_a_day_not_final_yet_is_not_found(fake: FakeUpstream) -> None:
    with pytest.raises(NotFound):
        run(client(fake).fetch_day("EUR-USD", "BID", TODAY))


def test_before_history_start_is_not_found_without_a_request(fake: FakeUpstream) -> None:
    src = client(fake, history_start={"EUR-USD": dt.date(2003, 5, 5)})
    with pytest.raises(NotFound, match="history start 2003-05-05"):
        run(src.fetch_day("EUR-USD", "BID", dt.date(2003, 5, 4)))
    assert src.attempts_total == 0 and fake.stats()["requests_total"] == 0
    run(src.fetch_day("EUR-USD", "BID", dt.date(2003, 5, 5)))


def test_other_client_errors_are_not_retried(fake: FakeUpstream) -> None:
    src = client(fake)
    with pytest.raises(SourceError, match="HTTP 400") as info:
        run(_bad_date(src))
    assert not isinstance(info.value, (NotFound, TransientSourceError))
    assert src.attempts_total == 1


async def _bad_date(src: HttpSource) -> FetchResult:
    """A request the server answers 400 (an impossible date in the path)."""
    return await src._fetch(
        "EUR-USD",
        "BID",
        PAST,
        f"{src.settings.base_url}/v1/candles/minute/EUR-USD/BID/2026/2/30",
        live=False,
    )


@pytest.mark.parametrize(
    "spec",
    [
        "429:*:count=2:retry_after=1",
        "500:*:count=2",
        "503:*:count=3",
        "reset:*:count=2",
        "truncate:*:count=2",
        "empty:*:count=1",
        "slow:*:count=1:delay=1.5",
    ],
)
def test_transient_faults_are_retried_then_succeed(fake: FakeUpstream, spec: str) -> None:
    fault = Fault.parse(spec)
    fake.add_fault(fault)
    expected_failures = int(spec.split("count=")[1].split(":")[0])
    src = client(fake, timeout_s=0.5)
    result = run(src.fetch_day("EUR-USD", "BID", PAST))
    assert result.body == fake.day_body("EUR-USD", "BID", PAST)
    assert result.attempts == expected_failures + 1
    assert src.budget.requests_total == expected_failures + 1
    assert fake.stats()["faults_fired"] == {fault.kind: expected_failures}
    check_day(result)


def test_retry_after_is_honoured(fake: FakeUpstream) -> None:
    fake.add_fault("429:*:count=1:retry_after=2")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the source's sleep, recorded instead of slept
        slept.append(seconds)
        await asyncio.sleep(0)

    retry = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05)
    settings = SourceSettings(base_url=fake.url, retry=retry)
    src = HttpSource(settings, RequestBudget(100.0, 10), rng=random.Random(1), sleep=sleep)
    run(src.fetch_day("EUR-USD", "BID", PAST))
    assert slept == [2.0]


def test_persistent_503_gives_up_with_a_transient_error(fake: FakeUpstream) -> None:
    fake.add_fault("503:*/EUR-USD/*:count=always")
    src = client(fake)
    with pytest.raises(TransientSourceError) as info:
        run(src.fetch_day("EUR-USD", "BID", PAST))
    err = info.value
    assert (err.symbol, err.side, err.day) == ("EUR-USD", "BID", "2026-03-03")
    assert "gave up after 4 attempts" in str(err) and "HTTP 503" in str(err) and err.url in str(err)
    assert src.attempts_total == 4 and src.retries_total == 3
    assert fake.stats()["by_status"] == {"503": 4}
    run(src.fetch_day("GBP-USD", "BID", PAST))  # other symbols keep flowing


def test_timeouts_exhaust_attempts(fake: FakeUpstream) -> None:
    fake.add_fault("slow:*:count=always:delay=1.0")
    src = client(fake, timeout_s=0.2, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    began = time.monotonic()
    with pytest.raises(TransientSourceError, match="timeout"):
        run(src.fetch_day("EUR-USD", "BID", PAST))
    assert time.monotonic() - began < 3.0


def test_connection_refused_is_transient() -> None:
    with FakeUpstream(clock=SimClock(0), real_dir=None) as up:
        url = up.url
    settings = SourceSettings(base_url=url, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    src = HttpSource(settings, RequestBudget(100.0, 10))
    with pytest.raises(TransientSourceError, match="connection"):
        run(src.fetch_day("EUR-USD", "BID", PAST))


def test_an_unresolvable_host_costs_exactly_one_attempt() -> None:
    retry = RetryPolicy(max_attempts=7, base_delay_s=0.01)
    settings = SourceSettings(base_url="http://nonexistent.invalid/", retry=retry)
    src = HttpSource(settings, RequestBudget(100.0, 10))
    with pytest.raises(HostUnresolved, match=r"'nonexistent\.invalid' does not resolve") as e:
        run(src.fetch_day("EUR-USD", "BID", PAST))
    assert not isinstance(e.value, TransientSourceError)
    assert (src.attempts_total, src.retries_total) == (1, 0)
    assert "check downloader.base_url" in str(e.value)


def test_bad_bodies_are_returned_for_the_transformer_to_reject(fake: FakeUpstream) -> None:
    fake.add_fault("html:*:count=1")
    result = run(client(fake).fetch_day("EUR-USD", "BID", PAST))
    assert result.body.startswith(b"<!DOCTYPE html>")


def test_budget_holds_the_rate_across_concurrent_tasks(fake: FakeUpstream) -> None:
    rate, burst, n = 20.0, 2, 24
    budget = RequestBudget(rate, burst)
    src = HttpSource(SourceSettings(base_url=fake.url, retry=FAST_RETRY), budget)
    days = [PAST - dt.timedelta(days=i) for i in range(n)]
    stamps: list[float] = []

    async def worker(mine: list[dt.date]) -> None:
        for day in mine:
            await src.fetch_day("EUR-USD", "BID", day)
            stamps.append(time.monotonic())

    async def main() -> float:
        began = time.monotonic()
        await asyncio.gather(*(worker(days[i::6]) for i in range(6)))
        return time.monotonic() - began

    elapsed = run(main())
    assert budget.requests_total == n == fake.stats()["requests_total"]
    assert elapsed >= (n - burst) / rate * 0.95  # 1.1 s at least
    assert elapsed < (n - burst) / rate + 5.0
    assert budget.waits_total >= 1
    stamps.sort()
    for i in range(len(stamps)):  # no one-second window holds more than rate + burst
        assert sum(1 for s in stamps[i:] if s - stamps[i] < 1.0) <= rate + burst


def test_fetched_days_go_through_the_raw_cache(fake: FakeUpstream, tmp_path: Path) -> None:
    cache = RawCache(tmp_path, today=fake.clock.today)
    src = client(fake)
    result = run(src.fetch_day("EUR-USD", "ASK", PAST))
    digest = cache.put_result(result)
    assert cache.get("EUR-USD", "ASK", PAST) == result.body and digest == result.digest
    live = run(src.fetch_live("EUR-USD", "ASK", TODAY))
    with pytest.raises(ValueError):
        cache.put_result(live)


# --- the downloader's fetch of a final day: one retry loop ---------------------------------


def downloader(up: FakeUpstream, tmp_path: Path, max_retries: int) -> Downloader:
    """A downloader on the fake (its own HttpSource from the configuration, not started)."""
    cfg = from_dict(
        {
            "pipeline": {"data_dir": str(tmp_path / "data"), "symbols": ["EUR-USD", "GBP-USD"]},
            "downloader": {
                "base_url": up.url,
                "requests_per_second": 1000.0,
                "burst": 100,
                "timeout_s": 5.0,
                "max_retries": max_retries,
            },
        }
    )
    return Downloader(cfg, serve_metrics=False)


def fetch_final(dl: Downloader, key: str, day: dt.date) -> FetchResult | str | None:
    st: StreamState = dl.streams[key]
    try:
        return run(dl.fetcher.final(st, day))
    finally:
        dl.stores.close()
        dl.ctx.destroy(linger=0)


def test_a_day_that_always_fails_costs_max_retries_plus_one_requests(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.add_fault("503:*/EUR-USD/*:count=always")
    dl = downloader(fake, tmp_path, max_retries=2)
    result = fetch_final(dl, "EUR-USD/BID/fetch", PAST)
    assert isinstance(result, str) and "gave up after 3 attempts" in result  # a gap
    assert fake.stats()["requests_total"] == 3 == fake.stats()["by_status"]["503"]
    assert dl.cache.get("EUR-USD", "BID", PAST) is None


@pytest.mark.parametrize(
    "faults",
    [
        ["html:*/EUR-USD/*:count=always"],
        # 503s, then refused bodies: still one budget of attempts (a retry loop nested
        # around the source's own would make max_retries + 1 requests per refused body)
        ["503:*/EUR-USD/*:count=2", "html:*/EUR-USD/*:count=always"],
    ],
)
def test_bodies_that_are_not_candle_json_are_retried_in_the_same_budget(
    fake: FakeUpstream, tmp_path: Path, faults: list[str]
) -> None:
    for spec in faults:
        fake.add_fault(spec)
    dl = downloader(fake, tmp_path, max_retries=2)
    result = fetch_final(dl, "EUR-USD/BID/fetch", PAST)
    assert isinstance(result, str) and "not candle JSON" in result  # a gap
    assert fake.stats()["requests_total"] == 3
    assert dl.cache.get("EUR-USD", "BID", PAST) is None  # never cached
    refused = dl.metrics.registry.get_sample_value(
        "barstream_errors_total", {"kind": "unparsable_body"}
    )
    assert refused == 3 - sum(spec.startswith("503") for spec in faults) * 2


def test_a_refused_body_then_a_good_one_is_taken_and_cached(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    fake.add_fault("invalid_json:*/GBP-USD/*:count=1")
    dl = downloader(fake, tmp_path, max_retries=2)
    result = fetch_final(dl, "GBP-USD/BID/fetch", PAST)
    assert isinstance(result, FetchResult) and result.attempts == 2
    assert fake.stats()["requests_total"] == 2
    assert result.body == fake.day_body("GBP-USD", "BID", PAST)
    assert dl.cache.get("GBP-USD", "BID", PAST) == result.body


def test_a_refetch_refuses_a_body_that_is_not_candle_json(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    """A re-fetch (revision check, gap retry) that gets an HTML page neither caches it nor
    journals it as a revision: the day keeps its good version."""
    dl = downloader(fake, tmp_path, max_retries=1)
    st: StreamState = dl.streams["EUR-USD/BID/fetch"]
    try:
        good = run(dl.fetcher.final(st, PAST))
        assert isinstance(good, FetchResult)
        journaled = dl.stores.stores[st.key].length
        fake.add_fault("html:*/EUR-USD/*:count=always")
        run(dl.fetcher.refetch(st, PAST))
        assert dl.cache.get("EUR-USD", "BID", PAST) == good.body
        assert dl.stores.stores[st.key].length == journaled  # no revision journaled
        revisions = dl.metrics.registry.get_sample_value(
            "barstream_revisions_total",
            dict(zip(STREAM_LABELS, stream_labels(st.key), strict=True)),
        )
        assert not revisions
    finally:
        dl.stores.close()
        dl.ctx.destroy(linger=0)


# --- the CLI process, driven over its control plane -----------------------------------------


def _post(url: str, payload: object) -> Any:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def fake_process() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "barstream.fake",
            "serve",
            "--port",
            "0",
            "--start",
            "2026-03-04T10:00:00",
            "--speed",
            "60",
            "--seed",
            "1",
            "--real-dir",
            "/nonexistent",
            "--fault",
            "503:*/GBP-USD/*:count=1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        line = lines.get(timeout=30)
        assert line.startswith("fake upstream listening on http://127.0.0.1:"), line
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
        stdout.close()
    assert code == 0  # SIGTERM stops the server cleanly


def test_cli_server_is_driven_from_another_process(fake_process: str) -> None:
    base = fake_process
    clock = _get(f"{base}/_control/clock")
    assert (
        clock["speed"] == 60.0
        and abs(clock["sim_now_ms"] - (day_start_ms(TODAY) + 36_000_000)) < 600_000
    )
    _post(f"{base}/_control/clock", {"iso": "2026-03-04T12:00:00", "speed": 0})
    assert _get(f"{base}/_control/clock")["sim_now_ms"] == day_start_ms(TODAY) + 12 * 3_600_000
    _post(f"{base}/_control/faults", {"spec": "429:*/EUR-USD/BID/2026/3/2:count=1"})
    settings = SourceSettings(base_url=base, retry=FAST_RETRY)
    src = HttpSource(settings, RequestBudget(100.0, 10))

    async def fetch_all() -> list[FetchResult]:
        return [
            await src.fetch_day("EUR-USD", "BID", dt.date(2026, 3, 2)),
            await src.fetch_day("GBP-USD", "BID", dt.date(2026, 3, 2)),
            await src.fetch_live("EUR-USD", "BID", TODAY),
        ]

    day, gbp, live = run(fetch_all())
    assert (day.attempts, gbp.attempts, live.attempts) == (2, 2, 1)
    out = decode_candles(
        live.body, symbol="EUR-USD", side="BID", day_ms=day_start_ms(TODAY), live=True, src_offset=0
    )
    assert out["ts_ms"][-1] == day_start_ms(TODAY) + 12 * 3_600_000
    _post(f"{base}/_control/clock", {"advance_ms": 600_000})
    later = run(src.fetch_live("EUR-USD", "BID", TODAY))
    assert len(later.body) > len(live.body)
    stats = _get(f"{base}/_control/stats")
    assert stats["by_status"] == {"200": 4, "429": 1, "503": 1}
    assert stats["faults_fired"] == {"429": 1, "503": 1}
    assert stats["by_route"]["day"] == 4 and stats["by_route"]["live"] == 2


def test_cli_help_and_generate_cache(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "barstream.fake", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--speed" in done.stdout and "--fault" in done.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "barstream.fake",
            "generate-cache",
            str(tmp_path),
            "USD-JPY",
            "ASK",
            "2020-01-01",
            "2020-01-10",
            "--real-dir",
            "/nonexistent",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cache = RawCache(tmp_path, today=lambda: dt.date.max)
    days = list(cache.days("USD-JPY", "ASK"))
    assert len(days) == 10
    for day in days:
        body = cache.get("USD-JPY", "ASK", day)
        assert body is not None
        decode_candles(
            body, symbol="USD-JPY", side="ASK", day_ms=day_start_ms(day), live=False, src_offset=0
        )


def test_two_servers_with_one_seed_serve_identical_bytes() -> None:
    clock_ms = day_start_ms(TODAY) + 10 * 3_600_000
    bodies = []
    for _ in range(2):
        with FakeUpstream(clock=SimClock(clock_ms, speed=0.0), seed=9, real_dir=None) as up:
            src = client(up)
            bodies.append(
                [
                    run(src.fetch_day(symbol, side, PAST)).body
                    for symbol in ("EUR-USD", "XAU-USD")
                    for side in ("BID", "ASK")
                ]
                + [run(src.fetch_live("EUR-USD", "BID", TODAY)).body]
            )
    assert bodies[0] == bodies[1]
    assert len(set(bodies[0])) == 5


def test_revision_switched_on_over_the_control_plane_changes_the_digest(fake: FakeUpstream) -> None:
    src = client(fake)
    before = run(src.fetch_day("EUR-USD", "BID", PAST))
    _post(f"{fake.url}/_control/faults", {"kind": "revise", "pattern": "*/EUR-USD/BID/2026/3/3"})
    after = run(src.fetch_day("EUR-USD", "BID", PAST))
    again = run(src.fetch_day("EUR-USD", "BID", PAST))
    assert before.digest != after.digest == again.digest  # the revision is persistent
    check_day(after)
    other = run(src.fetch_day("EUR-USD", "BID", PAST - dt.timedelta(days=1)))
    assert other.body == fake.day_body("EUR-USD", "BID", PAST - dt.timedelta(days=1))


@pytest.mark.parametrize("spec", ["invalid_json:*:count=1", "html:*:count=1"])
def test_garbage_bodies_reach_the_transformer_and_are_rejected(
    fake: FakeUpstream, spec: str
) -> None:
    fake.add_fault(spec)
    result = run(client(fake).fetch_day("EUR-USD", "BID", PAST))
    with pytest.raises(PayloadInvalid) as info:
        decode_candles(
            result.body,
            symbol="EUR-USD",
            side="BID",
            day_ms=day_start_ms(PAST),
            live=False,
            src_offset=3,
        )
    assert info.value.day == "2026-03-03" and info.value.field


def test_injected_404_is_not_found_and_not_retried(fake: FakeUpstream) -> None:
    fake.add_fault("404:*/2026/3/3:count=1")
    src = client(fake)
    with pytest.raises(NotFound):
        run(src.fetch_day("EUR-USD", "BID", PAST))
    assert src.attempts_total == 1
    assert run(src.fetch_day("EUR-USD", "BID", PAST)).attempts == 1  # the fault was used up


def test_random_faults_at_a_seeded_rate_are_all_absorbed(fake: FakeUpstream) -> None:
    for kind in ("503", "reset", "truncate"):
        fake.add_fault(Fault(kind, "*", count=None, probability=0.15))
    src = client(fake, retry=RetryPolicy(max_attempts=10, base_delay_s=0.005, max_delay_s=0.02))

    async def fetch_all() -> list[FetchResult]:
        days = [PAST - dt.timedelta(days=i) for i in range(20)]
        return await asyncio.gather(*(src.fetch_day("EUR-USD", "BID", d) for d in days))

    results = run(fetch_all(), timeout_s=60)
    for result in results:
        assert result.body == fake.day_body("EUR-USD", "BID", result.day)
    fired = sum(fake.stats()["faults_fired"].values())
    assert fired > 0 and src.attempts_total == 20 + fired
