"""Hostile requests against the HTTP API (the demo of tests/support/api_demo.py): each kind
gets the status that says what was wrong — never a 500, never a file outside web/ — and
the live SSE stream the package watches keeps delivering during and after them:

- malformed and hostile requests sent as raw bytes (huge ranges, bad dates, bad and huge
  limits, path tricks in symbol names, unknown formats and parameters, bad Accept, bad tz,
  bad Last-Event-ID, methods, huge query strings and headers, static-file traversal …);
- slow clients: a request head sent byte by byte then stalled, and a connection that sends
  nothing, are answered 408 and closed within api.header_timeout_s;
- clients that never read (a long /v1/bars body, an SSE stream) are cut off after
  api.send_timeout_s, so they hold no gateway connection: other requests are answered;
- 1,000 concurrent requests are all answered correctly, in bounded time;
- more live streams than api.max_streams: 503, and a slot frees when a client leaves.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import pytest

from tests.support import api as h
from tests.support.api_demo import HEADER_TIMEOUT_S, SEND_TIMEOUT_S, SIDE, SYMBOL, Demo
from tests.support.wait import wait_for

BARS = f"/v1/bars/{SYMBOL}/{SIDE}"
STREAM = f"/v1/stream/{SYMBOL}/{SIDE}/1m"
#: Longest pause the live stream may take while the API is under attack (it sends an
#: update every ~0.5 s: the demo's live polls).
MAX_GAP_S = 5.0


@pytest.fixture(scope="module")
def window(demo: Demo) -> float:
    """When the attacks began (the live stream is checked over the whole module)."""
    demo.watcher.check()
    return time.monotonic()


def _req(target: str, *, method: str = "GET", headers: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
    ).encode("latin-1")


_LONG = "A" * 10_000
CASES: list[tuple[str, bool, bytes, int, str | None]] = [
    # (kind, on the small server, request, status, error code)
    ("huge-range", True, _req(f"{BARS}/1m?start=1970-01-01&end=2200-01-01"), 413, "over-limit"),
    ("huge-range-arrow", True, _req(f"{BARS}/1m?start=0&format=arrow"), 413, "over-limit"),
    ("past-2200", False, _req(f"{BARS}/1m?end=2201-01-01"), 422, "bad-date"),
    ("bad-date", False, _req(f"{BARS}/1m?start=2026-13-45"), 422, "bad-date"),
    ("sql-date", False, _req(f"{BARS}/1m?start=%27%3B%20DROP%20TABLE%20x"), 422, "bad-date"),
    ("negative-ms", False, _req(f"{BARS}/1m?start=-5"), 422, "bad-date"),
    ("negative-limit", False, _req(f"{BARS}/1m?limit=-1"), 422, "bad-param"),
    ("huge-limit", False, _req(f"{BARS}/1m?limit={'9' * 40}"), 413, "over-limit"),
    ("overlong-limit", False, _req(f"{BARS}/1m?limit={'1' * 65}"), 422, "bad-param"),
    ("float-limit", False, _req(f"{BARS}/1m?limit=1e3"), 422, "bad-param"),
    ("symbol-%2F-traversal", False, _req("/v1/bars/..%2F..%2Fetc%2Fpasswd/BID/1m"), 404, None),
    ("symbol-dotdot", False, _req("/v1/bars/../../pyproject.toml/BID/1m"), 404, "not-found"),
    ("symbol-nul", False, _req("/v1/bars/EUR%00USD/BID/1m"), 404, "unknown-symbol"),
    ("symbol-long", False, _req(f"/v1/bars/{_LONG}/BID/1m"), 404, "unknown-topic"),
    ("symbol-not-utf8", False, _req("/v1/bars/%ff%fe/BID/1m"), 404, "unknown-symbol"),
    ("symbol-crlf", False, _req("/v1/bars/EUR%0d%0aX-Evil:%201/BID/1m"), 404, "unknown-symbol"),
    ("unknown-format", False, _req(f"{BARS}/1m?format=xlsx"), 406, "unknown-format"),
    ("unknown-param", False, _req(f"{BARS}/1m?a=1&b=2"), 422, "bad-param"),
    (
        "many-params",
        False,
        _req(f"{BARS}/1m?" + "&".join(f"p{i}=1" for i in range(2000))),
        422,
        "bad-param",
    ),
    (
        "bad-accept",
        False,
        _req(f"{BARS}/1m", headers="Accept: image/png\r\n"),
        406,
        "unknown-format",
    ),
    (
        "garbage-accept",
        False,
        _req(f"{BARS}/1m", headers="Accept: ;;;,,q=x,*/*;q=abc\r\n"),
        406,
        "unknown-format",
    ),
    (
        "huge-accept",
        False,
        _req(f"{BARS}/1m", headers=f"Accept: {'a' * 100_000}\r\n"),
        406,
        "unknown-format",
    ),
    ("bad-tz", False, _req(f"{BARS}/1m?tz=Mars/Olympus"), 422, "bad-param"),
    ("tz-traversal", False, _req(f"{BARS}/1m?tz=../../etc/passwd"), 422, "bad-param"),
    (
        "bad-last-event-id",
        False,
        _req(STREAM, headers="Last-Event-ID: 1.2\r\n"),
        422,
        "bad-event-id",
    ),
    (
        "negative-last-event-id",
        False,
        _req(STREAM, headers="Last-Event-ID: ab.-1.5\r\n"),
        422,
        "bad-event-id",
    ),
    ("stream-huge-history", False, _req(f"{STREAM}?history={10**9}"), 413, "over-limit"),
    ("stream-negative-history", False, _req(f"{STREAM}?history=-3"), 422, "bad-param"),
    ("stream-unknown-param", False, _req(f"{STREAM}?since=0"), 422, "bad-param"),
    ("post", False, _req(f"{BARS}/1m", method="POST"), 405, "method-not-allowed"),
    ("delete", False, _req("/v1/topics", method="DELETE"), 405, "method-not-allowed"),
    ("put-stream", False, _req(STREAM, method="PUT"), 405, "method-not-allowed"),
    ("huge-query", False, _req(f"{BARS}/1m?x={'a' * 200_000}"), 400, None),
    ("static-traversal", False, _req("/static/../pyproject.toml"), 404, None),
    ("static-%2e%2e", False, _req("/static/%2e%2e/pyproject.toml"), 404, None),
    ("static-%2f", False, _req("/static/..%2fpyproject.toml"), 404, None),
    ("vendor-traversal", False, _req("/static/vendor/x/../../../pyproject.toml"), 404, None),
    ("garbage-request-line", False, b"GARBAGE\r\n\r\n", 400, None),
]


@pytest.mark.parametrize(
    ("kind", "small", "request_", "status", "code"), CASES, ids=[c[0] for c in CASES]
)
def test_hostile_request(
    demo: Demo,
    window: float,
    kind: str,
    small: bool,
    request_: bytes,
    status: int,
    code: str | None,
) -> None:
    got, body = h.raw(demo.small_port if small else demo.port, request_)
    assert got == status, (kind, got, body[:300])
    assert b"[project]" not in body and b"root:" not in body, kind  # no file leaked
    if code is not None:
        doc = json.loads(body)
        assert doc["error"] == code, (kind, doc)
        assert doc["message"], kind


def test_head_answers_headers_only(demo: Demo, window: float) -> None:
    for target in (f"{BARS}/1h?limit=3", "/healthz", "/v1/topics"):
        with socket.create_connection(("127.0.0.1", demo.port), timeout=10) as s:
            s.sendall(_req(target, method="HEAD"))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert body == b"", (target, body[:100])
    # the crlf in a symbol did not become a response header
    _, body = h.raw(demo.port, _req("/v1/bars/EUR%0d%0aX-Evil:%201/BID/1m"))
    assert b"\r\nX-Evil" not in body


def test_slow_clients_are_cut_off(demo: Demo, window: float) -> None:
    """A request head sent byte by byte and then stalled, and a connection that sends
    nothing: 408 and closed within api.header_timeout_s — while others are answered."""
    dribblers = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", demo.port), timeout=10)
        dribblers.append(s)
    silent = [socket.create_connection(("127.0.0.1", demo.port), timeout=10) for _ in range(20)]
    t0 = time.monotonic()
    head = _req(f"{BARS}/1h?limit=1")[:-4]  # never the blank line that ends the head
    for byte in head[:40]:
        for s in dribblers:
            s.send(bytes([byte]))
        time.sleep(0.01)
    # meanwhile the API answers everybody else
    assert demo.http.get(f"{demo.base}{BARS}/1h", params={"limit": 2}).status_code == 200
    try:
        for s in dribblers + silent:
            took = h.closed_within(s, HEADER_TIMEOUT_S + 5 - (time.monotonic() - t0))
            assert took is not None, "a stalled client was not closed"
        assert time.monotonic() - t0 < HEADER_TIMEOUT_S + 5
    finally:
        for s in dribblers + silent:
            s.close()
    status, body = h.raw(demo.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", HEADER_TIMEOUT_S + 5)
    assert status == 408 and json.loads(body)["error"] == "request-timeout", body


def _stalled(port: int, request: bytes) -> socket.socket:
    s = socket.socket()
    # a tiny window and a tiny segment size (the server's send buffer autotunes to a few
    # segments, so it fills with a few kB, not MBs), and never read
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    return s


def test_clients_that_never_read_are_cut_off(demo: Demo, window: float) -> None:
    """More non-reading clients than api.gateway_connections, each asking for a long body,
    and one SSE stream never read: cut off after api.send_timeout_s; meanwhile and after,
    /v1/bars is answered (before, the stalled bodies held every gateway connection)."""
    streams_before = demo.metric("barstream_api_live_streams")
    log = demo.sup.log_dir / "api.log"
    cut_before = log.read_text().count("cut off")
    big = _req(f"{BARS}/1m?format=ndjson&tz=America/New_York")
    socks = [_stalled(demo.port, big) for _ in range(12)]
    socks.append(_stalled(demo.port, _req(f"{STREAM}?history=4000&tz=Asia/Kolkata")))
    t0 = time.monotonic()
    try:
        wait_for(
            lambda: demo.metric("barstream_api_live_streams") > streams_before,
            10,
            what="the unread SSE stream open",
        )
        r = demo.http.get(f"{demo.base}{BARS}/1h", params={"limit": 3})
        assert r.status_code == 200 and len(r.json()["bars"]) == 3
        assert time.monotonic() - t0 < SEND_TIMEOUT_S + 10
        # every one cut off (unread: reading would unblock it); the last 4 waited for a
        # gateway connection, so they are cut one api.send_timeout_s after the first 8
        wait_for(
            lambda: log.read_text().count("cut off") >= cut_before + len(socks),
            3 * SEND_TIMEOUT_S + 10,
            what=f"{len(socks)} clients that never read cut off (api.log)",
        )
        for s in socks:  # aborted: what the kernel holds, then a reset or the end
            assert h.closed_within(s, 5) is not None, "a cut-off client's socket is open"
        wait_for(
            lambda: demo.metric("barstream_api_live_streams") == streams_before,
            10,
            what="the cut-off SSE stream's slot freed",
        )
        r = demo.http.get(f"{demo.base}{BARS}/1h", params={"limit": 3})
        assert r.status_code == 200 and len(r.json()["bars"]) == 3
    finally:
        for s in socks:
            s.close()


async def _thousand(demo: Demo, start: int, end: int) -> tuple[float, list[str]]:
    ref_1h = httpx.get(f"{demo.base}{BARS}/1h", params={"start": start, "end": end}).content
    ref_1d = httpx.get(f"{demo.base}{BARS}/1d", params={"start": start, "format": "csv"})
    ref_1d_ok = ref_1d.status_code == 200
    kinds = ["1h"] * 400 + ["1d"] * 200 + ["topics"] * 200 + ["healthz"] * 100 + ["404"] * 100
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=0)
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=demo.base, limits=limits, timeout=60) as client:

        async def one(kind: str) -> None:
            if kind == "1h":
                r = await client.get(f"{BARS}/1h", params={"start": start, "end": end})
                ok = r.status_code == 200 and r.content == ref_1h
            elif kind == "1d":
                r = await client.get(f"{BARS}/1d", params={"start": start, "format": "csv"})
                # the open day's bar may change between two answers: its lines but the last
                ok = ref_1d_ok and r.status_code == 200
                ok = ok and r.text.splitlines()[:-1] == ref_1d.text.splitlines()[:-1]
            elif kind == "topics":
                r = await client.get("/v1/topics")
                ok = r.status_code == 200 and f"{SYMBOL}/{SIDE}/1m" in r.text
            elif kind == "healthz":
                r = await client.get("/healthz")
                ok = r.status_code == 200 and r.json()["ok"] is True
            else:
                r = await client.get("/v1/bars/XAU-USD/BID/1m")
                ok = r.status_code == 404 and r.json()["error"] == "unknown-symbol"
            if not ok:
                problems.append(f"{kind}: {r.status_code} {r.text[:200]}")

        t0 = time.monotonic()
        await asyncio.gather(*(one(k) for k in kinds))
        return time.monotonic() - t0, problems


def test_thousand_concurrent_requests(demo: Demo, closed: dict[str, Any], window: float) -> None:
    start, _, rec = closed["1h"]
    took, problems = asyncio.run(_thousand(demo, start, int(rec["ts_ms"][60])))
    assert not problems, f"{len(problems)} of 1000 wrong, e.g. {problems[:3]}"
    assert took < 60, f"1000 concurrent requests took {took:.1f}s"
    print(f"1000 concurrent requests answered in {took:.2f}s")


def test_more_streams_than_max_streams_is_503(demo: Demo, window: float) -> None:
    url = f"{demo.small}{STREAM}"
    with httpx.Client(timeout=httpx.Timeout(10, read=15)) as client:
        with client.stream("GET", url) as a, client.stream("GET", url) as b:
            # keep the event iterators: a dropped one closes its response (its stream)
            readers = [h.read_events(r.iter_lines()) for r in (a, b)]
            for r, events in zip((a, b), readers, strict=True):
                assert r.status_code == 200
                ev = next(e for e in events if e is not None)
                assert ev.data["kind"] == "history"
            assert demo.metric("barstream_api_live_streams", demo.small) == 2
            r = client.get(url)
            assert r.status_code == 503 and r.json()["error"] == "too-many-streams", r.text
            assert "api.max_streams" in r.json()["message"]

        def accepted() -> bool:
            with client.stream("GET", url) as r:
                return r.status_code == 200

        wait_for(accepted, 10, what="a stream slot freed after the clients left")


def test_live_stream_kept_delivering(demo: Demo, window: float) -> None:
    """The package's live stream delivered throughout the attacks and still does, and its
    copy of the series is the gateway's."""
    now = time.monotonic()
    gap = demo.watcher.max_gap(window, now)
    assert gap <= MAX_GAP_S, f"the live stream paused {gap:.1f}s under the attacks"
    demo.watcher.wait_more(2, 10, "after the attacks")
    bars = demo.watcher.bars()
    h.assert_series_matches(bars, demo.history("1m", start=bars[0]["ts_ms"]), "watcher")
