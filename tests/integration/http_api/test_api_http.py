"""The HTTP API's answers over real HTTP (httpx) against the demo pipeline of
tests/support/api_demo.py (``barstream:api`` under the real supervisord):

- every format (json, ndjson, csv, mt4, arrow, parquet; ``format=`` and ``Accept``) decodes
  back to exactly the gateway's records (``GatewayClient.history``) for 1m, 1h and 1d —
  ts_ms, OHLCV bit for bit, flags (the text formats: the provisional bit), time labels;
- a long range streams as the gateway's pages (several Arrow batches / Parquet row groups);
- the ranges of history.py (start/end/limit, provisional, date forms, tz labels), 413
  naming the limit, the 404/422/406 errors and their messages;
- the OpenAPI document validates (openapi-spec-validator) and names every route.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import pytest

from barstream.shared import config as config_mod
from tests.support import api as h
from tests.support.api_demo import (
    FORMATS,
    GATEWAY_PAGE,
    MEDIA,
    SIDE,
    SMALL_MAX,
    SYMBOL,
    TFS,
    Demo,
)

# -- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tf", TFS)
def test_every_format_decodes_to_the_gateway_records(
    demo: Demo, closed: dict[str, Any], tf: str, fmt: str
) -> None:
    start, end, records = closed[tf]
    extra = {"allow_utc": "true"} if fmt == "mt4" and tf == "1d" else {}
    r = demo.get(demo.bars_url(tf), start=start, end=end, format=fmt, **extra)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(MEDIA[fmt])
    assert r.headers["x-barstream-topic"] == f"{SYMBOL}/{SIDE}/{tf}"
    h.assert_same(h.decode(fmt, r.content), h.columns_of(records), f"{tf} {fmt}")


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("", "json"),
        ("*/*", "json"),
        ("application/x-ndjson", "ndjson"),
        ("text/csv", "csv"),
        ("application/vnd.apache.arrow.stream", "arrow"),
        ("application/vnd.apache.parquet", "parquet"),
        ("text/html;q=0.9, text/csv;q=0.5", "csv"),
        ("application/json;q=0.2, application/vnd.apache.arrow.stream;q=0.8", "arrow"),
        ("text/csv;q=0, application/x-parquet", "parquet"),
    ],
)
def test_content_negotiation(demo: Demo, closed: dict[str, Any], accept: str, fmt: str) -> None:
    start, end, records = closed["1h"]
    url = demo.bars_url("1h")
    r = demo.http.get(url, params={"start": start, "end": end}, headers={"Accept": accept})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(MEDIA[fmt]), (accept, r.headers)
    h.assert_same(h.decode(fmt, r.content), h.columns_of(records), f"Accept {accept!r}")
    # format= wins over Accept
    r = demo.http.get(
        url, params={"start": start, "end": end, "format": "json"}, headers={"Accept": "text/csv"}
    )
    assert r.headers["content-type"].startswith("application/json")


def test_long_range_streams_the_gateway_pages(demo: Demo, closed: dict[str, Any]) -> None:
    """A 1m history is several gateway pages: one Arrow stream of several record batches,
    one Parquet file of several row groups, all of the bars."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start, end, records = closed["1m"]
    assert len(records) > 2 * GATEWAY_PAGE
    body = demo.get(demo.bars_url("1m"), start=start, end=end, format="arrow").content
    batches = list(pa.ipc.open_stream(pa.py_buffer(body)))
    assert len(batches) >= 3 and sum(b.num_rows for b in batches) == len(records)
    body = demo.get(demo.bars_url("1m"), start=start, end=end, format="parquet").content
    assert pq.ParquetFile(pa.BufferReader(body)).num_row_groups >= 3
    # no start/end: every bar, also in gateway pages (a topic longer than one page)
    got = h.decode("arrow", demo.get(demo.bars_url("1m"), format="arrow").content)
    assert np.array_equal(got["ts_ms"][: len(records)], records["ts_ms"])


# -- ranges --------------------------------------------------------------------------------


def _bars(demo: Demo, tf: str, *, base: str | None = None, **params: Any) -> h.Columns:
    r = demo.get(demo.bars_url(tf, base), format="arrow", **params)
    assert r.status_code == 200, r.text
    return h.decode("arrow", r.content)


def _ts(cols: h.Columns) -> list[int]:
    return [int(t) for t in cols["ts_ms"]]


def test_range_semantics(demo: Demo, closed: dict[str, Any]) -> None:
    """history.py: start (+limit) the first bars from start; start+end [start, end); end
    (+limit) the last bars before end; nothing: the last bars; limit 0 and start == end:
    none."""
    for tf in ("1m", "1h"):
        _, _, rec = closed[tf]
        ts = [int(t) for t in rec["ts_ms"]]
        one = h.columns_of(rec)
        assert _ts(_bars(demo, tf, start=ts[10], limit=25)) == ts[10:35]
        assert _ts(_bars(demo, tf, start=ts[10] - 1, limit=25)) == ts[10:35]  # ts >= start
        assert _ts(_bars(demo, tf, start=ts[10], end=ts[40])) == ts[10:40]  # end excluded
        assert _ts(_bars(demo, tf, end=ts[120], limit=100)) == ts[20:120]
        assert _ts(_bars(demo, tf, end=ts[30])) == ts[:30]
        got = _bars(demo, tf, start=ts[5], end=ts[9])
        h.assert_same(got, {k: v[5:9] for k, v in one.items()}, f"{tf} [5, 9)")
        empty: list[dict[str, Any]] = [{"limit": 0}, {"start": ts[3], "limit": 0}]
        for params in [*empty, {"end": ts[9], "limit": 0}]:
            assert _ts(_bars(demo, tf, **params)) == [], params
        assert _ts(_bars(demo, tf, start=ts[7], end=ts[7])) == []
    # the last bars before an end right after the weekend: the widening search crosses it
    ts = [int(t) for t in closed["1m"][2]["ts_ms"]]
    friday = next(i for i, (a, b) in enumerate(itertools.pairwise(ts)) if b - a > 86_400_000)
    end = ts[friday + 30]  # 29 bars after the gap, the rest before it
    assert _ts(_bars(demo, "1m", end=end, limit=500)) == ts[friday + 30 - 500 : friday + 30]


def test_last_bars_and_provisional(demo: Demo) -> None:
    """No start/end: the newest bars (the open one last, provisional); provisional=false
    the last ``limit`` closed ones; a limit over the gateway's page is still answered."""
    for tf in TFS:
        got = _bars(demo, tf, limit=5)
        assert len(got["ts_ms"]) == 5 and got["provisional"][-1], tf
        gw = demo.history(tf, start=int(got["ts_ms"][0]))
        h.assert_same(
            {k: v[:4] for k, v in got.items()}, {k: v[:4] for k, v in h.columns_of(gw).items()}, tf
        )
        closed_only = _bars(demo, tf, limit=5, provisional="false")
        assert len(closed_only["ts_ms"]) == 5 and not closed_only["provisional"].any(), tf
        gw = demo.history(tf, start=int(closed_only["ts_ms"][0]))
        h.assert_same(closed_only, {k: v[:5] for k, v in h.columns_of(gw).items()}, tf)
    n = GATEWAY_PAGE + 500  # more than one gateway request answers with last=
    got = _bars(demo, "1m", limit=n)
    assert len(got["ts_ms"]) == n and got["provisional"][-1]
    gw = demo.history("1m", start=int(got["ts_ms"][0]), end=int(got["ts_ms"][-1]))
    assert np.array_equal(got["ts_ms"][:-1], gw["ts_ms"])


def test_date_forms_and_tz_labels(demo: Demo, closed: dict[str, Any]) -> None:
    _, _, rec = closed["1h"]
    monday = 1_782_086_400_000  # 2026-06-22T00:00:00Z
    want = _ts(_bars(demo, "1h", start=monday, limit=3))
    assert want[0] == monday
    for text in ("2026-06-22", "2026-06-22T00:00:00Z", "2026-06-22T02:00:00+02:00"):
        assert _ts(_bars(demo, "1h", start=text, limit=3)) == want, text
    start, end = int(rec["ts_ms"][0]), int(rec["ts_ms"][30])
    one = h.columns_of(rec[:30])
    for tz in ("Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"):
        for fmt in ("json", "ndjson", "csv"):
            r = demo.get(demo.bars_url("1h"), start=start, end=end, format=fmt, tz=tz)
            assert r.status_code == 200, r.text
            h.assert_same(
                h.decode(fmt, r.content), one, f"{fmt} tz={tz}", None if tz == "UTC" else tz
            )


def _error(r: httpx.Response, status: int, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    assert body["error"] == code, body
    for w in words:
        assert w in body["message"], (w, body)
    return body


def test_over_the_limit_is_413_naming_it(demo: Demo, closed: dict[str, Any]) -> None:
    url = demo.bars_url("1m", demo.small)
    ts = [int(t) for t in closed["1m"][2]["ts_ms"]]
    for params in (
        {},  # the whole 1m series
        {"start": ts[0], "end": ts[0] + (SMALL_MAX * 60_000) + 1},
        {"start": "1970-01-01", "end": "2200-01-01"},
        {"end": ts[-1]},
        {"limit": SMALL_MAX + 1},
        {"format": "arrow", "start": ts[0]},
    ):
        body = _error(demo.get(url, **params), 413, "over-limit", str(SMALL_MAX))
        assert body["limit"] == SMALL_MAX, body
    # up to the limit is answered: [t, t + 1000 min) holds at most 1000 1m bars
    got = _bars(demo, "1m", base=demo.small, start=ts[0], end=ts[0] + SMALL_MAX * 60_000)
    assert 0 < len(got["ts_ms"]) <= SMALL_MAX
    assert len(_bars(demo, "1m", base=demo.small, limit=SMALL_MAX)["ts_ms"]) == SMALL_MAX
    assert len(_bars(demo, "1d", base=demo.small)["ts_ms"]) >= 5  # a short series needs no limit
    stream = f"{demo.small}/v1/stream/{SYMBOL}/{SIDE}/1m"
    body = _error(demo.get(stream, history=SMALL_MAX + 1), 413, "over-limit")
    assert body["limit"] == SMALL_MAX


@pytest.mark.parametrize(
    ("path", "params", "headers", "status", "code", "words"),
    [
        (
            "/v1/bars/GBP-USD/BID/1m",
            {},
            {},
            404,
            "unknown-symbol",
            ["'GBP-USD'", "served: EUR-USD"],
        ),
        ("/v1/bars/EUR-USD/MID/1m", {}, {}, 404, "unknown-side", ["'MID'", "served: BID"]),
        ("/v1/bars/EUR-USD/BID/7m", {}, {}, 404, "unknown-timeframe", ["'7m'", "1h"]),
        ("/v1/stream/EUR-USD/BID/7m", {}, {}, 404, "unknown-timeframe", ["'7m'"]),
        ("/v2/bars", {}, {}, 404, "not-found", ["/openapi.json"]),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {"start": "2026-02-30"},
            {},
            422,
            "bad-date",
            ["start=", "ISO 8601"],
        ),
        ("/v1/bars/EUR-USD/BID/1m", {"end": "soon"}, {}, 422, "bad-date", ["end='soon'"]),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {"start": "2026-06-02", "end": "2026-06-01"},
            {},
            422,
            "bad-range",
            ["after"],
        ),
        ("/v1/bars/EUR-USD/BID/1m", {"limit": "ten"}, {}, 422, "bad-param", ["limit='ten'"]),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {"provisional": "maybe"},
            {},
            422,
            "bad-param",
            ["true or false"],
        ),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {"colour": "red"},
            {},
            422,
            "bad-param",
            ["'colour'", "known:"],
        ),
        ("/v1/bars/EUR-USD/BID/1m", {"tz": "Mars/Olympus"}, {}, 422, "bad-param", ["IANA"]),
        (
            "/v1/bars/EUR-USD/BID/1d",
            {"format": "mt4"},
            {},
            422,
            "mt4-misaligned",
            ["allow_utc=true"],
        ),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {"format": "xml"},
            {},
            406,
            "unknown-format",
            ["'xml'", "parquet"],
        ),
        (
            "/v1/bars/EUR-USD/BID/1m",
            {},
            {"Accept": "text/html"},
            406,
            "unknown-format",
            ["text/html"],
        ),
        (
            "/v1/stream/EUR-USD/BID/1m",
            {},
            {"Last-Event-ID": "x"},
            422,
            "bad-event-id",
            ["reconnect"],
        ),
    ],
)
def test_errors_say_what_was_wrong(
    demo: Demo,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str,
    words: list[str],
) -> None:
    _error(demo.http.get(demo.base + path, params=params, headers=headers), status, code, *words)


def test_openapi_document_is_valid_and_names_every_route(demo: Demo) -> None:
    from openapi_spec_validator import validate
    from starlette.routing import Mount, Route

    from barstream.services.api.app import create_app

    doc = demo.http.get(f"{demo.base}/openapi.json").json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    app = create_app(config_mod.load(demo.config))
    paths = set()
    for r in app.routes:
        assert isinstance(r, Route | Mount), r
        paths.add(r.path + "/{path}" if isinstance(r, Mount) else r.path)
    paths = {"/static/{path}" if p.startswith("/static/") else p for p in paths}
    assert paths <= set(doc["paths"]), paths - set(doc["paths"])
    for p in paths:  # and they answer (the chart page's files may be missing: `make web`)
        url = demo.base + p.replace("{symbol}", SYMBOL).replace("{side}", SIDE)
        url = url.replace("{timeframe}", "1d").replace("{path}", "index.html")
        if "/stream/" in url:
            continue
        assert demo.http.get(url).status_code in (
            200,
            404 if p in ("/", "/static/{path}") else 200,
        ), url
