"""The fake upstream's HTTP rate: sequential requests from one client, as the downloader
makes them.

- keep-alive: one ``http.client.HTTPConnection`` for every request (the connection reuse of
  the universe issue), on a data URL the fake answers without generating bars (today, not
  final yet: 404) — the cost of the HTTP round trip itself;
- keep-alive, a generated day: the same with a final day (the random walk's 1,400-odd bars,
  JSON-encoded and gzipped per request) — the generator's cost on top;
- a new connection per request (what urllib does), on the 404 URL.

Best of ``PASSES`` passes; the figure is requests/s of the whole loop (request, answer read).

    python -m bench.fake
"""

from __future__ import annotations

import datetime as dt
import http.client
import time

from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.source import day_start_ms

TODAY = dt.date(2026, 3, 4)  # a Wednesday
NOT_FINAL = "/v1/candles/minute/EUR-USD/BID/2026/3/4"
DAY = "/v1/candles/minute/EUR-USD/BID/2026/3/3"
HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "bench.fake"}
PASSES = 3


def _keepalive(port: int, path: str, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=HEADERS)
        conn.getresponse().read()
        began = time.perf_counter()
        for _ in range(n):
            conn.request("GET", path, headers=HEADERS)
            conn.getresponse().read()
        return n / (time.perf_counter() - began)
    finally:
        conn.close()


def _new_connections(port: int, path: str, n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={**HEADERS, "Connection": "close"})
            conn.getresponse().read()
        finally:
            conn.close()
    return n / (time.perf_counter() - began)


def run() -> list[tuple[str, float, str]]:
    clock = SimClock(day_start_ms(TODAY) + 10 * 3_600_000, speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=None) as up:
        keepalive = max(_keepalive(up.port, NOT_FINAL, 2000) for _ in range(PASSES))
        day = max(_keepalive(up.port, DAY, 200) for _ in range(PASSES))
        fresh = max(_new_connections(up.port, NOT_FINAL, 1000) for _ in range(PASSES))
    return [
        ("fake upstream keep-alive, 404 answer", keepalive, "requests/s"),
        ("fake upstream keep-alive, generated day (gzip)", day, "requests/s"),
        ("fake upstream new connection per request, 404", fresh, "requests/s"),
    ]


if __name__ == "__main__":
    from bench import print_table

    print_table(run())
