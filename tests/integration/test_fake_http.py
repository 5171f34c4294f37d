"""The fake upstream's HTTP answers on one keep-alive connection: every kind of answer is
whole and well-formed (status, headers, body) when it leaves in one write, and a keep-alive
client is answered at full speed (no ≈ 40 ms Nagle/delayed-ACK wait per request)."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import json
import time
from collections.abc import Callable, Iterator

import pytest

from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.source import day_start_ms
from tests.integration.test_downloader_http import PAST, TODAY

#: Floor of the default test: a loaded 2-core CI machine stays far above it, and the bug it
#: guards against (two writes per answer) gives ≈ 22/s. A quiet machine measures > 1,000/s.
MIN_REQUESTS_PER_S = 300.0
DAY = f"/v1/candles/minute/EUR-USD/BID/{PAST.year}/{PAST.month}/{PAST.day}"
#: A data URL answered without generating bars: today is not final yet, so 404.
NOT_FINAL = f"/v1/candles/minute/EUR-USD/BID/{TODAY.year}/{TODAY.month}/{TODAY.day}"
GZIP = {"Accept-Encoding": "gzip"}


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    clock = SimClock(day_start_ms(TODAY) + 10 * 3_600_000, speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=None) as up:
        yield up


@pytest.fixture
def conn(fake: FakeUpstream) -> Iterator[http.client.HTTPConnection]:
    c = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    yield c
    c.close()


def get(
    c: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    c.request("GET", path, headers=headers or {})
    response = c.getresponse()
    return response, response.read()


def test_thousand_keepalive_requests_at_full_speed(
    fake: FakeUpstream,
    conn: http.client.HTTPConnection,
    record_property: Callable[[str, object], None],
) -> None:
    get(conn, NOT_FINAL, GZIP)  # connect
    sock = conn.sock
    began = time.perf_counter()
    statuses = set()
    for _ in range(1000):
        response, _body = get(conn, NOT_FINAL, GZIP)
        statuses.add(response.status)
    rate = 1000 / (time.perf_counter() - began)
    record_property("keepalive_requests_per_s", round(rate))
    print(f"fake upstream: 1,000 keep-alive requests at {rate:,.0f} requests/s")
    assert conn.sock is sock, "the connection was not kept alive"
    assert statuses == {404}
    assert fake.stats()["by_status"] == {"404": 1001}
    assert rate >= MIN_REQUESTS_PER_S, f"{rate:.0f} requests/s on one keep-alive connection"


def test_every_answer_is_whole_on_one_keepalive_connection(
    fake: FakeUpstream, conn: http.client.HTTPConnection
) -> None:
    response, body = get(conn, DAY, GZIP)
    assert response.status == 200 and response.reason == "OK"
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(body)
    assert gzip.decompress(body) == fake.day_body("EUR-USD", "BID", PAST)
    assert response.headers["Server"].startswith("fake-dukascopy/1")
    date = email.utils.parsedate_to_datetime(response.headers["Date"])  # the simulated time
    assert abs(date.timestamp() * 1000 - fake.clock.now_ms()) <= 1000
    sock = conn.sock

    response, body = get(conn, DAY)  # no gzip asked: none sent
    assert response.getheader("Content-Encoding") is None
    assert body == fake.day_body("EUR-USD", "BID", PAST)

    fake.add_fault("429:*/2026/3/3:count=1:retry_after=7")
    response, body = get(conn, DAY)
    assert (response.status, response.headers["Retry-After"], body) == (
        429,
        "7",
        b'{"error":"injected"}',
    )

    conn.request("POST", "/_control/clock", body=json.dumps({"advance_ms": 60_000}))
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Encoding") is None
    assert json.loads(response.read())["sim_now_ms"] == fake.clock.now_ms()

    response, body = get(conn, "/nowhere", GZIP)
    assert response.status == 404 and json.loads(gzip.decompress(body))["path"] == "/nowhere"

    assert conn.sock is sock, "every answer above kept the connection"

    conn.request("PUT", DAY)  # http.server's own answer (send_error), which then closes
    response = conn.getresponse()
    assert (response.status, response.headers["Connection"]) == (501, "close")
    response.read()

    fake.add_fault("truncate:*/2026/3/3:count=1")
    conn.request("GET", DAY)
    response = conn.getresponse()
    assert response.headers["Connection"] == "close"
    with pytest.raises(http.client.IncompleteRead):
        response.read()
    response, body = get(conn, DAY)  # http.client reconnects; the fake serves on
    assert response.status == 200 and body == fake.day_body("EUR-USD", "BID", PAST)
    assert conn.sock is not sock
