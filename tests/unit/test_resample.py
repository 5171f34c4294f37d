"""resampler.resample and .cascade: direct resampling, the cascade, the incremental Cascade."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from barstream.services.resampler.cascade import Cascade, _reduceat_sum
from barstream.services.resampler.resample import (
    parent_of,
    plan,
    resample,
    resample_all,
    watermark_ms,
)
from barstream.shared.alignment import MT4, UTC, Alignment
from barstream.shared.record import (
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    RECORD_DTYPE,
)
from barstream.shared.sessions import Session
from barstream.shared.timeframe import DAY_MS, MINUTE_MS, Timeframe
from tests.support.memstore import MemoryStore
from tests.support.minutes import random_minutes, records_at, utc_ms

TFS = ["5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y", "2h", "90m", "8h", "3d"]
BERLIN = ZoneInfo("Europe/Berlin")
DAY_SESSION = Session("day", "Europe/Berlin", dt.time(9), dt.time(17, 30))
NIGHT_SESSION = Session(
    "night", "Europe/Berlin", dt.time(17, 30), dt.time(8), weekdays=frozenset({0, 1, 2, 3, 6})
)
INDEX_SESSIONS = [DAY_SESSION, NIGHT_SESSION]
SWITCHES = [
    utc_ms(2019, 3, 10, 7),
    utc_ms(2019, 3, 31, 1),
    utc_ms(2019, 10, 27, 1),
    utc_ms(2019, 11, 3, 6),
]
CONFIGS = {
    "utc": (UTC, None),
    "mt4": (MT4, None),
    "berlin-sessions": (UTC, INDEX_SESSIONS),
    "mt4-sessions": (MT4, INDEX_SESSIONS),
}


def tf(text: str) -> Timeframe:
    return Timeframe.parse(text)


def berlin_ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=BERLIN).timestamp() * 1000)  # type: ignore[misc,arg-type]


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    if got.tobytes() == want.tobytes():
        return
    n = min(len(got), len(want))
    bad = [i for i in range(n) if got[i].tobytes() != want[i].tobytes()]
    first = bad[0] if bad else n
    raise AssertionError(
        f"{what}: {len(got)} vs {len(want)} records, first difference at {first}: "
        f"got {got[first] if first < len(got) else None} want {want[first] if first < len(want) else None}"
    )


# -- parents ---------------------------------------------------------------------------------------


def test_canonical_parents() -> None:
    want = {
        "5m": "1m", "15m": "5m", "30m": "15m", "1h": "30m", "4h": "1h", "1d": "4h",
        "1W": "1d", "1M": "1d", "1Y": "1M", "2h": "1h", "8h": "4h", "6h": "1h", "90m": "30m",
        "7m": "1m", "10m": "5m", "3d": "1d", "2W": "1W", "3M": "1M",
    }  # fmt: skip
    for alignment in (UTC, MT4):
        got = {k: str(parent_of(k, alignment)) for k in want}
        assert got == want, alignment.name
    with_sessions = {
        k: str(parent_of(k, UTC, INDEX_SESSIONS)) for k in ("1h", "1d", "1W", "1M", "1Y", "3d")
    }
    assert with_sessions == {
        "1h": "30m",
        "1d": "4h",
        "1W": "1m",
        "1M": "1m",
        "1Y": "1M",
        "3d": "1m",
    }
    odd = Session(
        "day", "Europe/Berlin", dt.time(9), dt.time(17, 30), origins=(("1h", dt.time(9, 15)),)
    )
    assert str(parent_of("1h", UTC, [odd])) == "15m"  # 30m grid from 09:00 misses 09:15
    assert str(parent_of("4h", UTC, [odd])) == "30m"  # 4h from 09:00, 1h from 09:15: not nested


def test_plan_adds_needed_parents_first() -> None:
    order = [str(t) for t in plan(["1Y", "2h"], MT4)]
    assert order == ["5m", "15m", "30m", "1h", "2h", "4h", "1d", "1M", "1Y"]


# -- direct resampling -----------------------------------------------------------------------------


def test_ohlcv_src_and_no_flat_fill() -> None:
    t0 = utc_ms(2019, 2, 4, 10)
    ts = np.array([t0, t0 + MINUTE_MS, t0 + 4 * MINUTE_MS, t0 + 11 * MINUTE_MS])
    m1 = np.zeros(4, RECORD_DTYPE)
    m1["ts_ms"] = ts
    m1["open"] = [1, 2, 3, 4]
    m1["high"] = [5, 9, 6, 7]
    m1["low"] = [0.5, 1, 0.25, 3]
    m1["close"] = [2, 3, 4, 5]
    m1["volume"] = [1, 2, 3, 4]
    m1["flags"] = [0, FLAG_LIVE, 0, FLAG_REVISED]
    bars = resample(m1, "5m", UTC, base_offset=100)
    assert bars["ts_ms"].tolist() == [t0, t0 + 10 * MINUTE_MS]  # 10:05 has no minutes: no bar
    assert bars[0].tolist()[:8] == (t0, 1.0, 9.0, 0.25, 4.0, 6.0, 100, 3)
    assert bars[1].tolist()[:8] == (t0 + 10 * MINUTE_MS, 4.0, 7.0, 3.0, 5.0, 4.0, 103, 1)
    assert bars["flags"].tolist() == [FLAG_LIVE, FLAG_REVISED | FLAG_PROVISIONAL]


# -- closure ---------------------------------------------------------------------------------------


def minutes_until(last_ms: int, n: int = 120, last_flags: int = 0) -> np.ndarray:
    ts = last_ms - np.arange(n)[::-1].astype(np.int64) * MINUTE_MS
    out = records_at(np.random.default_rng(1), ts)
    out["flags"][-1] = last_flags
    return out


def test_watermark_rule() -> None:
    r = np.zeros(1, RECORD_DTYPE)[0]
    r["ts_ms"] = utc_ms(2019, 2, 4, 10, 59)
    assert watermark_ms(r) == utc_ms(2019, 2, 4, 11)
    r["flags"] = FLAG_PROVISIONAL
    assert watermark_ms(r) == utc_ms(2019, 2, 4, 10, 59)
    r["flags"] = FLAG_DAY_END
    assert watermark_ms(r) == utc_ms(2019, 2, 5)


def test_bar_closes_with_its_last_minute() -> None:
    m1 = minutes_until(utc_ms(2019, 2, 4, 10, 59))
    assert resample(m1, "1h")["flags"][-1] & FLAG_PROVISIONAL == 0
    assert resample(m1, "4h")["flags"][-1] & FLAG_PROVISIONAL  # 08:00-12:00 still open
    m1 = minutes_until(utc_ms(2019, 2, 4, 10, 59), last_flags=FLAG_PROVISIONAL)
    assert resample(m1, "1h")["flags"][-1] & FLAG_PROVISIONAL  # that minute may still change
    m1 = minutes_until(utc_ms(2019, 2, 4, 10, 58))
    assert resample(m1, "1h")["flags"][-1] & FLAG_PROVISIONAL


def test_day_end_closes_the_day_but_not_the_week() -> None:
    m1 = minutes_until(utc_ms(2019, 2, 6, 20, 59), last_flags=FLAG_DAY_END)  # Wednesday
    for name, open_ in {"1h": False, "4h": False, "1d": False, "1W": True, "1M": True}.items():
        bars = resample(m1, name)
        assert bool(bars["flags"][-1] & FLAG_PROVISIONAL) == open_, name
        assert not np.any(bars["flags"][:-1] & FLAG_PROVISIONAL), name  # only the last
    # the upstream is complete through 24:00 UTC: mt4's day (ends 22:00 UTC in winter) is closed
    assert resample(m1, "1d", MT4)["flags"][-1] & FLAG_PROVISIONAL == 0
    no_day_end = m1.copy()
    no_day_end["flags"][-1] = 0
    assert resample(no_day_end, "1d", MT4)["flags"][-1] & FLAG_PROVISIONAL


def test_only_last_bar_provisional_and_day_end_not_inherited() -> None:
    m1 = minutes_until(utc_ms(2019, 2, 6, 10, 29), n=600, last_flags=FLAG_PROVISIONAL)
    m1["flags"][100] = FLAG_DAY_END | FLAG_PROVISIONAL
    for name in TFS:
        bars = resample(m1, name)
        assert not np.any(bars["flags"][:-1] & (FLAG_PROVISIONAL | FLAG_DAY_END)), name
        assert bars["flags"][-1] == FLAG_PROVISIONAL, name


# -- mt4 and sessions on realistic shapes ------------------------------------------------------------


def test_mt4_week_gives_five_days_and_one_week() -> None:
    ts = np.arange(utc_ms(2019, 2, 3, 22), utc_ms(2019, 2, 8, 22), MINUTE_MS)
    m1 = records_at(np.random.default_rng(2), ts)
    out = resample_all(m1, ["1d", "1W"], MT4)
    ny = ZoneInfo("America/New_York")
    days = [dt.datetime.fromtimestamp(t / 1000, ny) for t in out[tf("1d")]["ts_ms"]]
    assert [(d.strftime("%a"), d.hour) for d in days] == [
        ("Sun", 17), ("Mon", 17), ("Tue", 17), ("Wed", 17), ("Thu", 17)
    ]  # fmt: skip
    assert out[tf("1d")]["src_count"].tolist() == [1440] * 5
    assert out[tf("1W")]["ts_ms"].tolist() == [utc_ms(2019, 2, 3, 22)]
    assert out[tf("1W")]["src_count"].tolist() == [len(ts)]


@pytest.mark.parametrize("switch_day", [dt.date(2019, 3, 10), dt.date(2019, 11, 3)])
def test_mt4_daily_bars_around_us_switch(switch_day: dt.date) -> None:
    start = dt.datetime.combine(switch_day - dt.timedelta(days=7), dt.time(0), dt.UTC)
    ts = np.arange(
        int(start.timestamp() * 1000), int(start.timestamp() * 1000) + 14 * DAY_MS, MINUTE_MS
    )
    m1 = records_at(np.random.default_rng(3), ts)
    ny = ZoneInfo("America/New_York")
    for bar in resample_all(m1, ["1d"], MT4)[tf("1d")][1:]:
        local = dt.datetime.fromtimestamp(int(bar["ts_ms"]) / 1000, ny)
        assert local.time() == dt.time(17) and local.weekday() in (6, 0, 1, 2, 3), local


def test_index_sessions_bars_on_session_origins() -> None:
    # Wed 3 July 2019, Berlin: minutes 07:00-23:59 local; sessions 09:00-17:30 and 17:30-08:00
    ts = np.arange(berlin_ms(2019, 7, 3, 7), berlin_ms(2019, 7, 4, 0), MINUTE_MS)
    m1 = records_at(np.random.default_rng(4), ts)
    out = resample_all(m1, ["1h", "4h", "1d", "1W"], UTC, INDEX_SESSIONS)
    hours = [
        dt.datetime.fromtimestamp(t / 1000, BERLIN).strftime("%H:%M")
        for t in out[tf("1h")]["ts_ms"]
    ]
    assert hours == [
        "06:30", "07:30",  # Tuesday's night occurrence: grid from 17:30, runs to 08:00
        "09:00", "10:00", "11:00", "12:00", "13:00", "14:00", "15:00", "16:00", "17:00",
        "17:30", "18:30", "19:30", "20:30", "21:30", "22:30", "23:30",
    ]  # fmt: skip
    assert out[tf("1h")]["session"].tolist() == [2, 2] + [1] * 9 + [2] * 7
    assert out[tf("1h")]["src_count"].tolist() == [30, 30] + [60] * 8 + [30] + [60] * 6 + [30]
    four = [
        dt.datetime.fromtimestamp(t / 1000, BERLIN).strftime("%H:%M")
        for t in out[tf("4h")]["ts_ms"]
    ]
    assert four == ["05:30", "09:00", "13:00", "17:00", "17:30", "21:30"]
    days = out[tf("1d")]
    assert [dt.datetime.fromtimestamp(t / 1000, BERLIN).strftime("%d %H:%M") for t in days["ts_ms"]] == [
        "02 17:30", "03 09:00", "03 17:30"
    ]  # fmt: skip
    # 08:00-09:00 matches no session: excluded from every timeframe, the week included
    assert int(out[tf("1W")]["src_count"].sum()) == len(ts) - 60
    assert out[tf("1W")]["session"].tolist() == [0]


# -- cascade equals direct ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    switch=st.sampled_from(SWITCHES),
    config=st.sampled_from(sorted(CONFIGS)),
)
def test_cascade_equals_direct(seed: int, switch: int, config: str) -> None:
    alignment, sessions = CONFIGS[config]
    rng = np.random.default_rng(seed)
    m1 = random_minutes(rng, switch - 20 * DAY_MS, 40 * 1440, density=float(rng.uniform(0.05, 1)))
    m1["flags"][rng.random(len(m1)) < 0.01] |= FLAG_REVISED
    if len(m1):
        m1["flags"][-1] |= int(rng.choice([0, FLAG_PROVISIONAL, FLAG_DAY_END]))
    cascade = resample_all(m1, TFS, alignment, sessions, base_offset=7)
    for name, bars in cascade.items():
        direct = resample(m1, name, alignment, sessions, base_offset=7)
        assert_same(bars, direct, f"seed={seed} {config} {name}")


# -- incremental equals batch ------------------------------------------------------------------------


class Stores:
    """The 1m store and every timeframe store of one Cascade, in memory."""

    def __init__(
        self, timeframes: list[str], alignment: Alignment, sessions: list[Session] | None
    ) -> None:
        self.m1 = MemoryStore()
        self.bars: dict[Timeframe, MemoryStore] = {}
        self.cascade = Cascade(
            timeframes,
            alignment,
            sessions,
            m1=lambda: self.m1.records,
            bars=lambda t: self.bars[t].records,
        )
        for t in self.cascade.timeframes:
            self.bars[t] = MemoryStore()

    def update(self, start: int, records: np.ndarray) -> None:
        changes = self.cascade.update(start, records)
        assert set(changes) == set(self.cascade.timeframes)
        for t, (x, new) in changes.items():
            self.bars[t].replace_from(x, new)
        self.m1.replace_from(start, records)

    def check(self, what: str) -> None:
        want = resample_all(
            self.m1.records, self.cascade.timeframes, self.cascade.alignment, self.cascade.sessions
        )
        for t in self.cascade.timeframes:
            assert_same(self.bars[t].records, want[t], f"{what} {t}")


def feed(stores: Stores, m1: np.ndarray, rng: np.random.Generator, what: str) -> None:
    """Minute by minute, as the aggregator publishes a live day: each minute first appears
    provisional (and changes), then final; day ends flagged; a checkpoint every ~400 updates."""
    for i in range(len(m1)):
        if rng.random() < 0.3:
            prov = m1[i : i + 1].copy()
            prov["flags"] |= FLAG_PROVISIONAL | FLAG_LIVE
            prov["close"] = prov["low"]
            prov["volume"] += 1
            stores.update(i, prov)
            if rng.random() < 0.5:
                stores.update(i, prov)  # a re-poll that changed nothing
        stores.update(i, m1[i : i + 1])
        if rng.random() < 0.0025:
            stores.check(f"{what} at minute {i}")


@pytest.mark.timeout(120)  # ~35 s on a busy 2-core machine
@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: the seed is reported
)
@given(
    seed=st.integers(0, 2**32 - 1),
    switch=st.sampled_from(SWITCHES),
    config=st.sampled_from(sorted(CONFIGS)),
)
def test_incremental_equals_batch(seed: int, switch: int, config: str) -> None:
    alignment, sessions = CONFIGS[config]
    rng = np.random.default_rng(seed)
    what = f"seed={seed} {config}"
    m1 = random_minutes(rng, switch - 3 * DAY_MS, 6 * 1440, density=0.5)
    days = m1["ts_ms"] // DAY_MS
    m1["flags"][np.flatnonzero(days[1:] != days[:-1])] |= FLAG_DAY_END
    stores = Stores(TFS, alignment, sessions)
    half = len(m1) // 2
    feed(stores, m1[:half], rng, what)
    stores.check(f"{what} before the revision")
    # a revision in the middle: minutes changed, removed and inserted from offset x on
    x = int(rng.integers(0, half))
    revised = m1[x:half].copy()
    revised["high"] += 3
    revised["flags"] |= FLAG_REVISED
    revised = revised[rng.random(len(revised)) < 0.8]
    gap_ts = np.setdiff1d(
        np.arange(int(m1["ts_ms"][x]), int(m1["ts_ms"][half - 1]), MINUTE_MS), m1["ts_ms"][x:half]
    )
    extra = (
        records_at(rng, rng.choice(gap_ts, min(len(gap_ts), 20), replace=False))
        if len(gap_ts)
        else revised[:0]
    )
    revised = np.sort(np.concatenate([revised, extra]), order="ts_ms")
    stores.update(x, revised)
    stores.check(f"{what} after a revision at {x}")
    # a truncation (a vanished provisional tail), then the rest of the series
    if len(revised) > 2:
        stores.update(x + len(revised) - 2, revised[:0])
        stores.check(f"{what} after a truncation")
        stores.update(x + len(revised) - 2, revised[-2:])
    rest = m1[half:]
    feed(stores, rest[: len(rest) // 2], rng, what)
    stores.update(len(stores.m1.records), rest[len(rest) // 2 :])  # a catch-up batch
    stores.check(f"{what} final")
    assert stores.cascade.fast_updates > 0


def test_incremental_from_scratch_on_existing_stores() -> None:
    """A Cascade started over stores written by an earlier one (a restart) continues them."""
    rng = np.random.default_rng(9)
    m1 = random_minutes(rng, utc_ms(2019, 3, 8), 4 * 1440)
    first = Stores(TFS, MT4, None)
    for i in range(len(m1) // 2):
        first.update(i, m1[i : i + 1])
    second = Stores(TFS, MT4, None)
    second.m1 = first.m1
    second.bars = first.bars
    for i in range(len(m1) // 2, len(m1)):
        second.update(i, m1[i : i + 1])
    second.check("after restart")


def test_one_minute_costs_the_same_on_a_long_history() -> None:
    """The per-minute path only slices near the end: time per minute does not grow with the
    history (a year versus a week of 1m records before the measured minutes)."""
    import time

    def per_minute(history_days: int) -> float:
        rng = np.random.default_rng(5)
        m1 = random_minutes(rng, utc_ms(2018, 1, 1), history_days * 1440 + 3000, density=1.0)
        stores = Stores(["5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y"], UTC, None)
        n0 = len(m1) - 3000
        stores.update(0, m1[:n0])
        t0 = time.perf_counter()
        for i in range(n0, len(m1)):
            for t, (x, new) in stores.cascade.update(i, m1[i : i + 1]).items():
                stores.bars[t].replace_from(x, new)
            stores.m1.replace_from(i, m1[i : i + 1])
        return (time.perf_counter() - t0) / 3000

    short, long = per_minute(7), per_minute(365)
    assert long < 3 * short + 50e-6, (short, long)


def test_short_sums_match_numpy_reduceat() -> None:
    """The fast path sums short lists in Python; it must round exactly like the batch path."""
    rng = np.random.default_rng(12)
    for n in range(1, 40):
        for _ in range(300):
            x = rng.random(n) * 10.0 ** rng.integers(-3, 9)
            assert _reduceat_sum(x.tolist()) == np.add.reduceat(x, [0])[0], (n, x.tolist())
