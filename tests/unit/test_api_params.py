"""The HTTP API's parameter checks (pure): every bad value is refused with the status that
says what was wrong and a message naming the parameter; good ones parse exactly."""

from __future__ import annotations

import pytest

from barstream.services.api import params
from barstream.shared import config
from barstream.shared.errors import ApiError

CFG = config.from_dict(
    {
        "pipeline": {"symbols": ["EUR-USD", "USD-JPY"], "sides": ["BID", "ASK"]},
        "resampler": {"timeframes": ["5m", "1h", "4h", "1d"]},
        "api": {"max_records": 1000},
    }
)
REF = params.TopicRef("EUR-USD", "BID", "1h")


def refused(fn: object, *args: object) -> ApiError:
    with pytest.raises(ApiError) as e:
        fn(*args)  # type: ignore[operator]
    return e.value


def test_topic_refs_are_checked_against_the_configuration() -> None:
    assert params.topic_ref(CFG, "EUR-USD", "bid", "1h") == REF
    for args, code, named in (
        (("XAU-USD", "BID", "1h"), "unknown-symbol", "EUR-USD, USD-JPY"),
        (("EUR-USD", "MID", "1h"), "unknown-side", "BID, ASK"),
        (("EUR-USD", "BID", "2h"), "unknown-timeframe", "1m, 5m, 1h, 4h, 1d"),
        (("../../etc", "BID", "1h"), "unknown-symbol", "served"),
        (("E" * 5000, "BID", "1h"), "unknown-topic", "5000 characters"),
    ):
        e = refused(params.topic_ref, CFG, *args)
        assert (e.status, e.code) == (404, code) and named in str(e), (args, e)


def test_bars_query_parses_times_counts_flags_zones_and_formats() -> None:
    q = params.bars_query(
        CFG,
        REF,
        {
            "start": "2019-01-02",
            "end": "2019-01-03T00:00:00+01:00",
            "limit": "10",
            "provisional": "false",
            "tz": "Europe/London",
        },
        "text/csv;q=0.5, application/vnd.apache.arrow.stream",
    )
    assert (q.start_ms, q.end_ms) == (1546387200000, 1546470000000)
    assert (q.limit, q.provisional, q.fmt, str(q.tz)) == (10, False, "arrow", "Europe/London")
    assert params.bars_query(CFG, REF, {"format": "ndjson"}, "text/csv").fmt == "ndjson"
    assert params.bars_query(CFG, REF, {}, "").fmt == "json"
    assert params.bars_query(CFG, REF, {"start": "1546387200000"}, "*/*").start_ms == 1546387200000


@pytest.mark.parametrize(
    ("query", "accept", "status", "code", "named"),
    [
        ({"start": "yesterday"}, "", 422, "bad-date", "start='yesterday'"),
        ({"end": "2019-13-01"}, "", 422, "bad-date", "end="),
        ({"start": "99999999999999999"}, "", 422, "bad-date", "1970"),
        ({"start": "2019-02-01", "end": "2019-01-01"}, "", 422, "bad-range", "after"),
        ({"limit": "-5"}, "", 422, "bad-param", "limit"),
        ({"limit": "1e3"}, "", 422, "bad-param", "limit"),
        ({"limit": "1001"}, "", 413, "over-limit", "1000"),
        ({"provisional": "maybe"}, "", 422, "bad-param", "provisional"),
        ({"tz": "Mars/Olympus"}, "", 422, "bad-param", "IANA"),
        ({"format": "xlsx"}, "", 406, "unknown-format", "json, ndjson, csv"),
        ({}, "image/png", 406, "unknown-format", "Accept"),
        ({"colour": "red"}, "", 422, "bad-param", "'colour'"),
        ({"start": "x" * 500}, "", 422, "bad-param", "500 characters"),
    ],
)
def test_bad_bars_queries_say_what_is_wrong(
    query: dict[str, str], accept: str, status: int, code: str, named: str
) -> None:
    e = refused(params.bars_query, CFG, REF, query, accept)
    assert (e.status, e.code) == (status, code) and named in str(e), str(e)
    if status == 413:
        assert e.extra == {"limit": 1000}


def test_mt4_of_a_utc_store_is_refused_off_the_hour_grid_unless_allowed() -> None:
    day = params.TopicRef("EUR-USD", "BID", "1d")
    e = refused(params.bars_query, CFG, day, {"format": "mt4"}, "")
    assert e.code == "mt4-misaligned" and "allow_utc=true" in str(e)
    assert params.bars_query(CFG, day, {"format": "mt4", "allow_utc": "1"}, "").fmt == "mt4"
    assert params.bars_query(CFG, REF, {"format": "mt4"}, "").fmt == "mt4"  # 1h divides an hour


def test_stream_query() -> None:
    q = params.stream_query(CFG, REF, {"history": "50", "closed_only": "true"})
    assert (q.history, q.closed_only, q.tz) == (50, True, None)
    assert refused(params.stream_query, CFG, REF, {"since": "1"}).code == "bad-param"


def test_week_label_picks_the_day_mt4_weeks_are_labelled_with() -> None:
    assert params.bars_query(CFG, REF, {"format": "mt4"}, "").week_label == "monday"
    q = params.bars_query(CFG, REF, {"format": "mt4", "week_label": "sunday"}, "")
    assert q.week_label == "sunday"
    e = refused(params.bars_query, CFG, REF, {"week_label": "friday"}, "")
    assert (e.status, e.code) == (422, "bad-param") and "week_label='friday'" in str(e)
