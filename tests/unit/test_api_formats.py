"""services/api/formats.py, pure: every format's body decodes back to the records bit for
bit (arrow/parquet read with pyarrow, json/ndjson with msgspec, csv/mt4 parsed), empty
answers are valid bodies, several ``page()`` calls make one Arrow stream / one Parquet
file, time labels follow the zone across DST changes and odd offsets, ``negotiate()``."""

from __future__ import annotations

import datetime as dt
import io
import itertools

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barstream.services.api import formats
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED, empty
from tests.support import api as h

TOPIC = "EUR-USD/BID/1m"
MINUTE = 60_000
#: Values that trip text round trips: float sums, extremes, negative zero, subnormals.
EDGE = [0.1 + 0.2, 1.1, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 123456789.123456789]


def records(n: int, seed: int = 1, t0: int = 1_782_000_000_000, step: int = MINUTE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = empty(n)
    r["ts_ms"] = t0 + np.arange(n, dtype=np.int64) * step
    for k in h.PRICES:
        r[k] = rng.uniform(0.5, 2.0, n) * rng.choice([1.0, 1e-3, 1e4], n)
    r["volume"] = np.cumsum(rng.uniform(0, 10, n))  # float sums: 17 significant digits
    for i, x in enumerate(EDGE[: min(n, len(EDGE))]):
        r["close"][i] = x
        r["volume"][n - 1 - i] = abs(x)
    r["flags"] = rng.choice([0, FLAG_REVISED, 0x4, 0x8], n)
    if n:
        r["flags"][-1] |= FLAG_PROVISIONAL
    return r


def encode(fmt: str, pages: list[np.ndarray], tz: str | None = None) -> bytes:
    enc = formats.Encoder(fmt, TOPIC, None if tz is None else formats.zone(tz))
    return enc.start() + b"".join(enc.page(p) for p in pages) + enc.end()


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_every_format_round_trips_exactly(fmt: str) -> None:
    rec = records(500)
    got = h.decode(fmt, encode(fmt, [rec]))
    h.assert_same(got, h.columns_of(rec), fmt)
    if fmt == "json":
        assert list(got["topic"]) == [TOPIC]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(*[st.floats(allow_nan=False, allow_infinity=False, width=64)] * 5),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from(["json", "ndjson", "csv", "mt4"]),
)
def test_text_formats_round_trip_any_finite_float(rows: list[tuple[float, ...]], fmt: str) -> None:
    rec = records(len(rows))
    for i, row in enumerate(rows):
        for k, x in zip(h.PRICES, row, strict=True):
            rec[k][i] = x
    h.assert_same(h.decode(fmt, encode(fmt, [rec])), h.columns_of(rec), fmt)


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_empty_answers_are_valid_bodies(fmt: str) -> None:
    for pages in ([], [empty(0)], [empty(0), empty(0)]):
        body = encode(fmt, pages)
        got = h.decode(fmt, body)
        assert len(got["label" if fmt == "mt4" else "ts_ms"]) == 0, (fmt, body)
    assert encode("json", []) == b'{"topic":"EUR-USD/BID/1m","bars":[],"count":0}'
    assert encode("csv", []) == b"time,open,high,low,close,volume,provisional\n"
    assert encode("ndjson", []) == encode("mt4", []) == b""


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_several_pages_make_one_body(fmt: str) -> None:
    rec = records(1000, seed=2)
    cuts = [0, 1, 300, 300, 999, 1000]  # an empty page in the middle, a 1-bar one
    pages = [rec[a:b] for a, b in itertools.pairwise(cuts)]
    body = encode(fmt, pages)
    h.assert_same(h.decode(fmt, body), h.columns_of(rec), fmt)
    if fmt == "arrow":
        batches = list(pa.ipc.open_stream(pa.py_buffer(body)))
        assert [b.num_rows for b in batches] == [1, 299, 699, 1]  # one batch per page
    if fmt == "parquet":
        meta = pq.ParquetFile(io.BytesIO(body)).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sizes == [1, 299, 699, 1]
    if fmt == "json":
        assert msgspec.json.decode(body)["count"] == 1000


def test_page_bytes_stream_as_they_come() -> None:
    """Each page's bytes are handed out by its page() call (not held until end())."""
    for fmt in formats.FORMATS:
        enc = formats.Encoder(fmt, TOPIC)
        enc.start()
        assert enc.page(records(50)), fmt
        assert enc.page(records(50, seed=3)), fmt


def _utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


@pytest.mark.parametrize(
    ("tz", "first", "hours"),
    [
        ("Europe/London", "2026-03-28T22:00:00+00:00", 6),  # spring forward 01:00 UTC
        ("America/New_York", "2026-11-01T03:00:00+00:00", 6),  # fall back: 01:xx twice
        ("Australia/Lord_Howe", "2026-04-04T13:00:00+00:00", 3),  # DST is half an hour
        ("Asia/Kathmandu", "2026-06-24T00:00:00+00:00", 2),  # +05:45: quarter hours
        ("Asia/Kolkata", "2026-06-24T00:00:00+00:00", 1),
    ],
)
def test_time_labels_follow_the_zone_across_changes(tz: str, first: str, hours: int) -> None:
    rec = records(hours * 4, t0=_utc(first), step=15 * MINUTE)
    zone = formats.zone(tz)
    labels = formats.time_labels(rec["ts_ms"], zone)
    assert labels == [h.label(int(t), tz) for t in rec["ts_ms"]]
    offsets = {lbl[19:] for lbl in labels}
    if tz in ("Europe/London", "America/New_York", "Australia/Lord_Howe"):
        assert len(offsets) == 2, offsets  # the change is inside the range
    for lbl, t in zip(labels, rec["ts_ms"], strict=True):  # each reads back as the instant
        assert int(dt.datetime.fromisoformat(lbl).timestamp() * 1000) == t
    for fmt in ("json", "ndjson", "csv"):
        h.assert_same(h.decode(fmt, encode(fmt, [rec], tz)), h.columns_of(rec), fmt, tz)


def test_mt4_labels_are_server_time_across_new_york_dst() -> None:
    # New York springs forward 2026-03-08 07:00 UTC: server time GMT+2 → GMT+3
    rec = records(8, t0=_utc("2026-03-08T05:00:00+00:00"), step=30 * MINUTE)
    got = h.decode("mt4", encode("mt4", [rec]))
    assert list(got["label"]) == [h.mt4_label(int(t)) for t in rec["ts_ms"]]
    assert got["label"][0] == "2026.03.08,07:00" and got["label"][-1] == "2026.03.08,11:30"


def test_zone_names() -> None:
    assert formats.zone("UTC") is None and formats.zone("z") is None
    assert str(formats.zone("Europe/Berlin")) == "Europe/Berlin"
    for bad in ("Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Europe/"):
        with pytest.raises(ValueError, match="IANA"):
            formats.zone(bad)


@pytest.mark.parametrize(
    ("accept", "fmt"),
    [
        ("", "json"),
        ("  ", "json"),
        ("*/*", "json"),
        ("application/*", "json"),
        ("application/json", "json"),
        ("application/x-ndjson", "ndjson"),
        ("application/ndjson", "ndjson"),
        ("TEXT/CSV", "csv"),
        ("text/csv; charset=utf-8", "csv"),
        ("application/vnd.apache.arrow.stream", "arrow"),
        ("application/vnd.apache.parquet", "parquet"),
        ("application/x-parquet", "parquet"),
        ("text/html, text/csv;q=0.5, */*;q=0.1", "csv"),
        ("application/json;q=0.2, application/vnd.apache.arrow.stream;q=0.8", "arrow"),
        ("text/csv, application/json", "csv"),  # equal q: the first named
        ("text/csv;q=0, application/x-parquet", "parquet"),
        ("text/csv;q=abc, application/json;q=0.1", "json"),  # a bad q counts as 0
        ("text/html", None),
        ("image/png, text/plain", None),
        ("text/csv;q=0", None),
        (";;;,,", None),
    ],
)
def test_negotiate(accept: str, fmt: str | None) -> None:
    assert formats.negotiate(accept) == fmt


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        formats.Encoder("xml", TOPIC)


def test_mt4_pages_label_calendar_bars_as_metatrader() -> None:
    from barstream.shared.record import RECORD_DTYPE

    r = np.zeros(2, dtype=RECORD_DTYPE)
    # MT4 June 2019 opens Monday 3 June 00:00 server = Sunday 2 June 21:00 UTC; September
    # 2019 opens Monday 2 September 00:00 server = Sunday 1 September 21:00 UTC
    r["ts_ms"] = [1559509200000, 1567371600000]
    r["open"] = r["high"] = r["low"] = r["close"] = 1.1
    month = formats.Encoder("mt4", "EUR-USD/BID/1M").page(r)
    assert [line[:16] for line in bytes(month).decode().splitlines()] == [
        "2019.06.01,00:00",
        "2019.09.01,00:00",
    ]
    week = formats.Encoder("mt4", "EUR-USD/BID/1W", week_label="sunday").page(r)
    assert [line[:16] for line in bytes(week).decode().splitlines()] == [
        "2019.06.02,00:00",
        "2019.09.01,00:00",
    ]
