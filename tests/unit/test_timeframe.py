"""shared.timeframe, .alignment, .sessions: parsing, presets, DST-correct edges vs a minute oracle."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barstream.shared.alignment import MT4, UTC, Alignment, bucket_end_ms, bucket_start_ms
from barstream.shared.errors import ConfigError
from barstream.shared.sessions import Session, bucket_edges, session_ids
from barstream.shared.timeframe import DAY_MS, MINUTE_MS, Timeframe
from tests.support.minutes import utc_ms

NY = ZoneInfo("America/New_York")


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["1m", "2m", "5m", "15m", "30m", "1h", "2h", "4h", "8h", "1d", "1W", "1M", "1Y", "7m", "3d"],
)
def test_parse_format_round_trip(text: str) -> None:
    assert str(Timeframe.parse(text)) == text


@pytest.mark.parametrize("text", ["", "0m", "5", "1w", "24h", "1440m", "m5", "1.5h"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        Timeframe.parse(text)
    assert e.value.key == "timeframe"


def test_interval_and_order() -> None:
    assert Timeframe.parse("4h").interval_ms == 4 * 3_600_000
    assert Timeframe.parse("1W").interval_ms == 7 * DAY_MS
    assert Timeframe.parse("1M").interval_ms is None
    names = ["1Y", "1M", "2h", "90m", "1W", "1d", "1m"]
    ordered = sorted((Timeframe.parse(n) for n in names), key=lambda t: t.sort_key)
    assert [str(t) for t in ordered] == ["1m", "90m", "2h", "1d", "1W", "1M", "1Y"]


def test_mt4_preset_is_new_york_plus_seven() -> None:
    assert MT4.tz == "America/New_York"
    assert MT4.clock_shift_ms == 7 * 3_600_000
    assert MT4.day_start_ms == 17 * 3_600_000
    assert MT4.fold_weekend and not UTC.fold_weekend


def test_bad_alignment_and_session_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"alignment\.x\.tz"):
        Alignment("x", "Mars/Olympus")
    with pytest.raises(ConfigError, match=r"sessions\.s\.end"):
        Session("s", "Europe/Berlin", dt.time(9), dt.time(9))


# -- utc -----------------------------------------------------------------------------------------


def test_utc_edges() -> None:
    t = np.array([utc_ms(2019, 2, 6, 13, 37)])  # a Wednesday
    cases = {
        "5m": (utc_ms(2019, 2, 6, 13, 35), utc_ms(2019, 2, 6, 13, 40)),
        "4h": (utc_ms(2019, 2, 6, 12), utc_ms(2019, 2, 6, 16)),
        "1d": (utc_ms(2019, 2, 6), utc_ms(2019, 2, 7)),
        "1W": (utc_ms(2019, 2, 4), utc_ms(2019, 2, 11)),
        "1M": (utc_ms(2019, 2, 1), utc_ms(2019, 3, 1)),
        "1Y": (utc_ms(2019, 1, 1), utc_ms(2020, 1, 1)),
        "7m": (utc_ms(2019, 2, 6, 13, 32), utc_ms(2019, 2, 6, 13, 39)),  # 817 = 116 * 7 + 5
    }
    for tf, (a, b) in cases.items():
        assert bucket_start_ms(t, tf, UTC)[0] == a, tf
        assert bucket_end_ms(t, tf, UTC)[0] == b, tf


def test_grid_not_dividing_the_day_restarts_at_midnight() -> None:
    t = np.array([utc_ms(2019, 2, 6, 23, 58)])  # 1438 = 205 * 7 + 3
    assert bucket_start_ms(t, "7m", UTC)[0] == utc_ms(2019, 2, 6, 23, 55)
    assert bucket_end_ms(t, "7m", UTC)[0] == utc_ms(2019, 2, 7)


# -- mt4 across DST ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "day",
    [
        dt.date(2019, 3, 6),
        dt.date(2019, 3, 7),
        dt.date(2019, 3, 8),  # before US switch (10 Mar)
        dt.date(2019, 3, 12),
        dt.date(2019, 3, 13),  # after US, before EU (31 Mar)
        dt.date(2019, 4, 2),
        dt.date(2019, 10, 24),  # after EU spring; before EU autumn (27 Oct)
        dt.date(2019, 10, 29),
        dt.date(2019, 10, 31),  # after EU, before US autumn (3 Nov)
        dt.date(2019, 11, 5),
        dt.date(2019, 11, 6),  # after US autumn
    ],
)
def test_mt4_daily_bar_opens_at_17_new_york(day: dt.date) -> None:
    noon_ny = dt.datetime.combine(day, dt.time(12), NY)
    t = np.array([int(noon_ny.timestamp() * 1000)])
    start = dt.datetime.fromtimestamp(bucket_start_ms(t, "1d", MT4)[0] / 1000, NY)
    end = dt.datetime.fromtimestamp(bucket_end_ms(t, "1d", MT4)[0] / 1000, NY)
    assert (start.date(), start.time()) == (day - dt.timedelta(days=1), dt.time(17))
    # Friday's bar also holds the weekend: it ends at the Sunday-evening open
    end_day = day + dt.timedelta(days=2) if day.weekday() == 4 else day
    assert (end.date(), end.time()) == (end_day, dt.time(17))
    four = dt.datetime.fromtimestamp(bucket_start_ms(t, "4h", MT4)[0] / 1000, NY)
    assert four.time() == dt.time(9)  # 17, 21, 1, 5, 9, 13 New York


def test_mt4_week_of_real_shaped_data_has_five_days_no_sunday_bar() -> None:
    # Sunday 22:00 UTC (17:00 New York, winter) to Friday 22:00 UTC
    ts = np.arange(utc_ms(2019, 2, 3, 22), utc_ms(2019, 2, 8, 22), MINUTE_MS)
    days = np.unique(bucket_start_ms(ts, "1d", MT4))
    assert len(days) == 5
    assert [dt.datetime.fromtimestamp(d / 1000, NY).strftime("%a %H:%M") for d in days] == [
        "Sun 17:00",
        "Mon 17:00",
        "Tue 17:00",
        "Wed 17:00",
        "Thu 17:00",
    ]
    weeks = np.unique(bucket_start_ms(ts, "1W", MT4))
    assert list(weeks) == [utc_ms(2019, 2, 3, 22)]


def test_mt4_weekend_minutes_join_friday() -> None:
    sat = np.array([utc_ms(2019, 2, 9, 12)])  # server Saturday
    assert bucket_start_ms(sat, "1d", MT4)[0] == utc_ms(2019, 2, 7, 22)  # Friday's bar
    assert bucket_end_ms(sat, "1d", MT4)[0] == utc_ms(2019, 2, 10, 22)  # Sunday 17:00 NY


def test_mt4_month_starts_on_first_weekday() -> None:
    # 1 June 2019 is a Saturday: June's bar starts Monday 3 June 00:00 server (Sun 17:00 NY)
    t = np.array([utc_ms(2019, 6, 4, 12)])
    assert bucket_start_ms(t, "1M", MT4)[0] == utc_ms(2019, 6, 2, 21)
    may = np.array([utc_ms(2019, 6, 1, 12)])  # server Saturday 1 June: Friday 31 May's bar
    assert bucket_start_ms(may, "1M", MT4)[0] == utc_ms(2019, 4, 30, 21)
    assert bucket_end_ms(may, "1M", MT4)[0] == utc_ms(2019, 6, 2, 21)


# -- DST: a per-minute oracle ---------------------------------------------------------------------


def _clock(tz: ZoneInfo, shift_ms: int, t_ms: int) -> int:
    off = dt.datetime.fromtimestamp(t_ms / 1000, tz).utcoffset()
    assert off is not None
    return t_ms + int(off.total_seconds() * 1000) + shift_ms


def _intraday_key(clock: int, interval_ms: int) -> int:
    day = clock - clock % DAY_MS
    return day + (clock - day) // interval_ms * interval_ms


def _oracle_start(t_ms: int, interval_ms: int, tz: ZoneInfo, shift_ms: int) -> int:
    """Latest minute m ≤ t at which the clock reads a grid time, or jumps forward over one."""
    m = t_ms - t_ms % MINUTE_MS
    while True:
        c, c_prev = _clock(tz, shift_ms, m), _clock(tz, shift_ms, m - MINUTE_MS)
        on_grid = _intraday_key(c, interval_ms) == c
        jumped = c - c_prev > MINUTE_MS and _intraday_key(c, interval_ms) != _intraday_key(
            c_prev, interval_ms
        )
        if on_grid or jumped:
            return m
        m -= MINUTE_MS


def _oracle_day_start(t_ms: int, alignment: Alignment) -> int:
    tz = ZoneInfo(alignment.tz)

    def key(m: int) -> dt.date:
        d = dt.datetime.fromtimestamp(_clock(tz, alignment.clock_shift_ms, m) / 1000, dt.UTC).date()
        if alignment.fold_weekend and d.weekday() >= 5:
            d -= dt.timedelta(days=d.weekday() - 4)
        return d

    m = t_ms - t_ms % MINUTE_MS
    k = key(m)
    while key(m - MINUTE_MS) == k:
        m -= MINUTE_MS
    return m


SWITCHES = [
    utc_ms(2019, 3, 10, 7),  # US spring
    utc_ms(2019, 3, 31, 1),  # EU spring
    utc_ms(2019, 10, 27, 1),  # EU autumn
    utc_ms(2019, 11, 3, 6),  # US autumn
]
ZONES = {"berlin": ("Europe/Berlin", 0), "mt4": ("America/New_York", MT4.clock_shift_ms)}


@settings(max_examples=60, deadline=None)
@given(
    switch=st.sampled_from(SWITCHES),
    delta_min=st.integers(-26 * 60, 26 * 60),
    zone=st.sampled_from(sorted(ZONES)),
    interval_min=st.sampled_from([5, 15, 30, 60, 120, 240, 480, 7, 90]),
)
def test_intraday_edges_match_minute_oracle_across_dst(
    switch: int, delta_min: int, zone: str, interval_min: int
) -> None:
    tz_name, shift = ZONES[zone]
    alignment = Alignment("t", tz_name, shift)
    t = switch + delta_min * MINUTE_MS + 17_000
    tf = Timeframe(interval_min, "m")
    got = int(bucket_start_ms(np.array([t]), tf, alignment)[0])
    want = _oracle_start(t, interval_min * MINUTE_MS, ZoneInfo(tz_name), shift)
    assert iso(got) == iso(want), (zone, tf, iso(t))
    end = int(bucket_end_ms(np.array([t]), tf, alignment)[0])
    assert got <= t < end
    # the end is the next bar's start
    assert int(bucket_start_ms(np.array([end]), tf, alignment)[0]) == end
    assert int(bucket_start_ms(np.array([end - 1]), tf, alignment)[0]) == got


@settings(max_examples=40, deadline=None)
@given(
    switch=st.sampled_from(SWITCHES),
    delta_min=st.integers(-50 * 60, 50 * 60),
    alignment=st.sampled_from([UTC, MT4, Alignment("berlin", "Europe/Berlin")]),
)
def test_daily_edges_match_minute_oracle_across_dst(
    switch: int, delta_min: int, alignment: Alignment
) -> None:
    t = switch + delta_min * MINUTE_MS
    got = int(bucket_start_ms(np.array([t]), "1d", alignment)[0])
    assert iso(got) == iso(_oracle_day_start(t, alignment))


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(utc_ms(2017, 1, 1), utc_ms(2021, 1, 1)),
    tf=st.sampled_from(["1W", "1M", "1Y", "2d", "2W", "3M"]),
    alignment=st.sampled_from([UTC, MT4]),
)
def test_calendar_edges_contain_and_chain(t: int, tf: str, alignment: Alignment) -> None:
    a = int(bucket_start_ms(np.array([t]), tf, alignment)[0])
    b = int(bucket_end_ms(np.array([t]), tf, alignment)[0])
    assert a <= t < b
    assert int(bucket_start_ms(np.array([b]), tf, alignment)[0]) == b
    assert int(bucket_start_ms(np.array([a - 1]), tf, alignment)[0]) < a
    # every bar boundary is a daily boundary of the same alignment
    assert int(bucket_start_ms(np.array([a]), "1d", alignment)[0]) == a


def test_vectorized_equals_elementwise_over_a_year() -> None:
    ts = np.arange(utc_ms(2019, 1, 1), utc_ms(2020, 1, 1), 37 * MINUTE_MS)
    for tf in ("1h", "4h", "1d", "1W", "1M"):
        vec = bucket_start_ms(ts, tf, MT4)
        one = [int(bucket_start_ms(ts[i : i + 1], tf, MT4)[0]) for i in range(0, len(ts), 997)]
        assert list(vec[::997]) == one, tf
        assert np.all(vec <= ts) and np.all(np.diff(vec) >= 0)


# -- sessions ----------------------------------------------------------------------------------

DAY_SESSION = Session("day", "Europe/Berlin", dt.time(9), dt.time(17, 30))
NIGHT_SESSION = Session(
    "night", "Europe/Berlin", dt.time(17, 30), dt.time(8), weekdays=frozenset({0, 1, 2, 3, 6})
)


def berlin_ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=ZoneInfo("Europe/Berlin")).timestamp() * 1000)  # type: ignore[misc,arg-type]


def test_session_ids_first_match_and_wrapping() -> None:
    ts = np.array(
        [
            berlin_ms(2019, 7, 3, 10),  # Wednesday day session
            berlin_ms(2019, 7, 3, 23),  # Wednesday night (wraps)
            berlin_ms(2019, 7, 4, 7, 59),  # still Wednesday's night occurrence
            berlin_ms(2019, 7, 4, 8, 30),  # between sessions
            berlin_ms(2019, 7, 6, 12),  # Saturday: no session
            berlin_ms(2019, 7, 7, 20),  # Sunday night session
            berlin_ms(2019, 7, 5, 20),  # Friday night not listed
        ]
    )
    assert session_ids(ts, [DAY_SESSION, NIGHT_SESSION]).tolist() == [1, 2, 2, 0, 0, 2, 0]


def test_session_date_window() -> None:
    s = Session(
        "s",
        "Europe/Berlin",
        dt.time(9),
        dt.time(17),
        valid_from=dt.date(2019, 7, 2),
        valid_to=dt.date(2019, 7, 3),
    )
    ts = np.array([berlin_ms(2019, 7, d, 10) for d in (1, 2, 3, 4)])
    assert session_ids(ts, [s]).tolist() == [0, 1, 1, 0]


def test_session_edges_sit_on_the_session_origin() -> None:
    sessions = [DAY_SESSION, NIGHT_SESSION]
    ts = np.array(
        [
            berlin_ms(2019, 7, 3, 9, 0),
            berlin_ms(2019, 7, 3, 12, 59),
            berlin_ms(2019, 7, 3, 17, 10),
            berlin_ms(2019, 7, 3, 22, 0),
        ]
    )
    start, end, sid = bucket_edges(ts, "4h", UTC, sessions)
    assert [iso(x) for x in start] == [
        iso(berlin_ms(2019, 7, 3, 9)),
        iso(berlin_ms(2019, 7, 3, 9)),
        iso(berlin_ms(2019, 7, 3, 17)),
        iso(berlin_ms(2019, 7, 3, 21, 30)),
    ]
    assert [iso(x) for x in end] == [
        iso(berlin_ms(2019, 7, 3, 13)),
        iso(berlin_ms(2019, 7, 3, 13)),
        iso(berlin_ms(2019, 7, 3, 17, 30)),
        iso(berlin_ms(2019, 7, 4, 1, 30)),
    ]
    assert sid.tolist() == [1, 1, 1, 2]
    start, end, sid = bucket_edges(ts, "1d", UTC, sessions)
    assert iso(start[3]) == iso(berlin_ms(2019, 7, 3, 17, 30))
    assert iso(end[3]) == iso(berlin_ms(2019, 7, 4, 8))
    custom = Session(
        "day", "Europe/Berlin", dt.time(9), dt.time(17, 30), origins=(("1h", dt.time(8, 30)),)
    )
    start, _, _ = bucket_edges(ts[:2], "1h", UTC, [custom])
    assert [iso(x) for x in start] == [
        iso(berlin_ms(2019, 7, 3, 9)),
        iso(berlin_ms(2019, 7, 3, 12, 30)),
    ]


def test_no_session_minutes_have_no_bar() -> None:
    ts = np.array([berlin_ms(2019, 7, 4, 8, 30)])
    start, end, sid = bucket_edges(ts, "1h", UTC, [DAY_SESSION])
    assert (start[0], end[0], sid[0]) == (-1, -1, 0)
    start, end, sid = bucket_edges(ts, "1W", UTC, [DAY_SESSION])
    assert (start[0], sid[0]) == (-1, 0)


@pytest.mark.parametrize(
    ("alignment", "t", "want_start", "want_end"),
    [
        # Berlin falls back at 01:00 UTC (03:00 CEST → 02:00 CET): the 90m bar 01:30-03:00
        # CEST never reaches 03:00 before the jump, so it runs until 03:00 CET
        (
            Alignment("b", "Europe/Berlin"),
            utc_ms(2019, 10, 27, 0, 10),
            utc_ms(2019, 10, 26, 23, 30),
            utc_ms(2019, 10, 27, 2),
        ),
        # mt4 server clock falls back at 06:00 UTC (09:00 → 08:00): 07:30-09:00 runs to 07:00 UTC
        (MT4, utc_ms(2019, 11, 3, 4, 40), utc_ms(2019, 11, 3, 4, 30), utc_ms(2019, 11, 3, 7)),
    ],
)
def test_bar_ending_exactly_at_a_fall_back(
    alignment: Alignment, t: int, want_start: int, want_end: int
) -> None:
    ts = np.array([t])
    assert iso(int(bucket_start_ms(ts, "90m", alignment)[0])) == iso(want_start)
    assert iso(int(bucket_end_ms(ts, "90m", alignment)[0])) == iso(want_end)
    inside = np.array([want_end - 1])
    assert int(bucket_start_ms(inside, "90m", alignment)[0]) == want_start
