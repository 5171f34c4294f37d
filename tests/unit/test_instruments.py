"""Instrument metadata and keep-alive connections against the fake over real HTTP: the
history start read from ``histories``, the document cached once under raw/_meta, a failure
logged (no start, never silent), a bad cached document fetched again; an idle connection
the server closed replaced before reuse, not a failed attempt."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.instruments import history_start_of, history_starts, meta_path
from barstream.services.downloader.source import (
    HttpSource,
    RequestBudget,
    RetryPolicy,
    SourceSettings,
    day_start_ms,
)

TODAY = dt.date(2026, 3, 10)
GBP_START = dt.date(2011, 7, 4)


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    clock = SimClock(day_start_ms(TODAY), speed=0.0)
    with FakeUpstream(
        clock=clock, seed=1, real_dir=None, instrument_starts={"GBP-USD": GBP_START}
    ) as up:
        yield up


def _source(url: str) -> HttpSource:
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    return HttpSource(
        SourceSettings(base_url=url, timeout_s=5.0, retry=retry), RequestBudget(1e4, 100)
    )


def test_history_start_of_reads_the_minute_entry() -> None:
    doc = {
        "histories": [{"period": "TICK", "from": 1}, {"period": "MINUTE", "from": 1052074800000}]
    }
    assert history_start_of(json.dumps(doc).encode()) == dt.date(2003, 5, 4)
    for bad in (
        b"[]",
        b"{}",
        b'{"histories": [{"period": "DAY", "from": 0}]}',
        b'{"histories": [{"period": "MINUTE", "from": "x"}]}',
        b"not json",
    ):
        with pytest.raises(ValueError):
            history_start_of(bad)


def test_starts_are_fetched_once_cached_and_configured_ones_win(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    source = _source(fake.url)
    configured = {"USD-JPY": dt.date(2020, 1, 1)}
    syms = ["EUR-USD", "GBP-USD", "USD-JPY"]
    starts = asyncio.run(history_starts(source, tmp_path, syms, configured))
    assert starts == {
        "EUR-USD": dt.date(2000, 1, 1),  # the fake's default history_start
        "GBP-USD": GBP_START,
        "USD-JPY": dt.date(2020, 1, 1),
    }
    assert history_start_of(meta_path(tmp_path, "GBP-USD").read_bytes()) == GBP_START
    assert not meta_path(tmp_path, "USD-JPY").exists()  # never asked: configured
    again = asyncio.run(history_starts(_source(fake.url), tmp_path, syms, configured))
    assert again == starts
    by_path = fake.requests_by_path()
    assert by_path == {"/v1/instruments/EUR-USD": 1, "/v1/instruments/GBP-USD": 1}


def test_a_missing_document_is_logged_and_gives_no_start(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "barstream.downloader.instruments")
    starts = asyncio.run(history_starts(_source(fake.url), tmp_path, ["NOPE-USD"], {}))
    assert starts == {}
    assert not meta_path(tmp_path, "NOPE-USD").exists()
    [record] = caplog.records
    assert "NOPE-USD: no instrument metadata" in record.getMessage()
    assert "HTTP 404" in record.getMessage()
    assert "downloader.history_start.NOPE-USD" in record.getMessage()


def test_a_bad_cached_document_is_fetched_again(
    tmp_path: Path, fake: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    path = meta_path(tmp_path, "GBP-USD")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"histories": "torn')
    starts = asyncio.run(history_starts(_source(fake.url), tmp_path, ["GBP-USD"], {}))
    assert starts == {"GBP-USD": GBP_START}
    assert history_start_of(path.read_bytes()) == GBP_START
    assert "unusable" in caplog.text


def test_an_idle_connection_closed_by_the_server_is_replaced_not_a_failed_attempt() -> None:
    """A keep-alive server that closes each connection after one answer (its idle timeout at
    its shortest): every request still succeeds at its first attempt, on a new connection."""
    body = b'{"times":[],"opens":[],"highs":[],"lows":[],"closes":[],"volumes":[]}'
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    srv = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve() -> None:
        for _ in range(3):
            conn, _ = srv.accept()
            accepted.append(conn)
            conn.recv(65536)
            conn.sendall(answer)  # keep-alive answer, then the server closes while idle
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    source = _source(f"http://127.0.0.1:{srv.getsockname()[1]}")

    async def three() -> list[int]:
        out = []
        for d in (2, 3, 4):
            result = await source.fetch_day("EUR-USD", "BID", dt.date(2026, 3, d))
            out.append(result.attempts)
            await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
        return out

    try:
        assert asyncio.run(three()) == [1, 1, 1]
    finally:
        srv.close()
        thread.join(timeout=5)
    assert len(accepted) == 3
    assert source.failures == {}
    assert source.connections_opened == 3


def test_the_downloader_service_takes_the_cached_starts_and_asks_nothing_before(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    from barstream.services.downloader.service import Downloader
    from barstream.shared.config import from_dict
    from barstream.shared.errors import NotFound

    raw = tmp_path / "data" / "raw"
    asyncio.run(history_starts(_source(fake.url), raw, ["GBP-USD"], {}))  # as a backfill does
    cfg = from_dict(
        {
            "pipeline": {"data_dir": str(tmp_path / "data"), "symbols": ["EUR-USD", "GBP-USD"]},
            "downloader": {"base_url": fake.url, "history_start": {"EUR-USD": "2010-01-04"}},
        }
    )
    dl = Downloader(cfg, serve_metrics=False)
    try:
        assert isinstance(dl.source, HttpSource)
        assert dl.source.settings.history_start == {
            "EUR-USD": dt.date(2010, 1, 4),  # configured: it wins, no document read
            "GBP-USD": GBP_START,  # from raw/_meta
        }
        before = GBP_START - dt.timedelta(days=1)
        with pytest.raises(NotFound, match="before the history start 2011-07-04"):
            asyncio.run(dl.source.fetch_day("GBP-USD", "BID", before))
    finally:
        dl.stores.close()
    assert list(fake.requests_by_path()) == ["/v1/instruments/GBP-USD"]
