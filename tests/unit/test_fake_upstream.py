"""The fake upstream's data: generated days are valid Dukascopy encodings, deterministic,
tied to the real data where it exists, and the live day grows with the simulated clock."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from barstream.fake import histdata
from barstream.fake.bars import empty_bars, point_decimals, provisional_until
from barstream.fake.cache import generate_cache
from barstream.fake.clock import SimClock
from barstream.fake.encoding import decode_points, encode_candles
from barstream.fake.faults import Fault, FaultPlan
from barstream.fake.generators import HistDataGenerator, RandomWalkGenerator
from barstream.fake.upstream import RECORDED, FakeUpstream
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.transform import decode_candles
from barstream.shared.record import FLAG_LIVE, FLAG_PROVISIONAL
from tests.support import bi5

MON = dt.date(2025, 3, 3)


def decode(
    body: bytes, symbol: str, day: dt.date, *, live: bool = False, side: str = "BID"
) -> np.ndarray:
    return decode_candles(
        body, symbol=symbol, side=side, day_ms=day_start_ms(day), live=live, src_offset=0
    )


def at(day: dt.date, hh: int = 0, mm: int = 0, ss: float = 0.0) -> int:
    return day_start_ms(day) + hh * 3_600_000 + mm * 60_000 + int(ss * 1000)


def upstream(
    real_dir: Path | None = None, *, now_ms: int | None = None, seed: int = 1
) -> FakeUpstream:
    clock = SimClock(now_ms if now_ms is not None else at(dt.date(2026, 1, 5)), speed=0.0)
    return FakeUpstream(clock=clock, seed=seed, real_dir=real_dir)


# --- encoding and the random walk (no real data needed) ---------------------------------------


@pytest.mark.parametrize("symbol", ["EUR-USD", "USD-JPY", "XAU-USD", "DEU.IDX-EUR", "BTC-USD"])
@pytest.mark.parametrize("side", ["BID", "ASK"])
def test_random_walk_week_decodes_and_validates(symbol: str, side: str) -> None:
    gen = RandomWalkGenerator(seed=3)
    for offset in range(7):
        day = MON + dt.timedelta(days=offset)
        body = encode_candles(gen.day(symbol, side, day), empty_timestamp_ms=day_start_ms(day))
        out = decode(body, symbol, day, side=side)
        minutes = (out["ts_ms"] - day_start_ms(day)) // 60_000
        if day.weekday() == 5:
            assert len(out) == 0
        elif day.weekday() == 6:  # opens 17:00 New York = 22:00 UTC in winter, 21:00 in summer
            assert minutes.min() >= 21 * 60 and len(out) > 50
        elif day.weekday() == 4:
            assert minutes.max() < 22 * 60 and len(out) > 1000
        else:
            assert len(out) > 1300


def test_random_walk_shape_follows_new_york_daylight_time() -> None:
    gen = RandomWalkGenerator(seed=1)
    winter, summer = dt.date(2025, 1, 12), dt.date(2025, 7, 13)  # Sundays
    assert (
        gen.day("EUR-USD", "BID", winter).ts_ms.min() - day_start_ms(winter)
    ) // 60_000 >= 22 * 60
    first_summer = (gen.day("EUR-USD", "BID", summer).ts_ms.min() - day_start_ms(summer)) // 60_000
    assert 21 * 60 <= first_summer < 22 * 60


def test_ask_is_above_bid() -> None:
    gen = RandomWalkGenerator(seed=1)
    bid, ask = gen.day("EUR-USD", "BID", MON), gen.day("EUR-USD", "ASK", MON)
    assert np.all(ask.low > bid.low) and np.array_equal(ask.ts_ms, bid.ts_ms)


def test_multipliers_follow_the_instrument() -> None:
    assert [point_decimals(s) for s in ("EUR-USD", "USD-JPY", "XAU-USD", "BTC-USD")] == [
        5,
        3,
        3,
        1,
    ]
    gen = RandomWalkGenerator()
    for symbol, text in (("EUR-USD", b'"multiplier":1.0E-5'), ("USD-JPY", b'"multiplier":0.001')):
        assert text in encode_candles(gen.day(symbol, "BID", MON), empty_timestamp_ms=0)


def test_empty_day_encoding_is_dukascopys() -> None:
    body = encode_candles(empty_bars(5), empty_timestamp_ms=1783728000000)
    assert body == (
        b'{"timestamp":1783728000000,"multiplier":1.0E-5,"open":null,"high":null,"low":null,'
        b'"close":null,"shift":60000,"times":[],"opens":[],"highs":[],"lows":[],"closes":[],'
        b'"volumes":[]}'
    )


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = upstream(seed=5), upstream(seed=5), upstream(seed=6)
    for day in (MON, dt.date(2011, 6, 15)):
        assert a.day_body("EUR-USD", "BID", day) == b.day_body("EUR-USD", "BID", day)
        assert a.day_body("EUR-USD", "BID", day) != c.day_body("EUR-USD", "BID", day)


def test_provisional_minute_grows_to_the_final_bar() -> None:
    gen = RandomWalkGenerator(seed=2)
    day = gen.day("EUR-USD", "BID", MON)
    i = 600
    t0 = int(day.ts_ms[i])
    seen = []
    for frac in (0.0, 0.2, 0.5, 0.8, 0.999):
        part = provisional_until(day, t0 + int(frac * 60_000))
        assert len(part) == i + 1
        o, h, lo, c = (int(x[-1]) for x in (part.open, part.high, part.low, part.close))
        assert o == int(day.open[i]) and lo <= min(o, c) and max(o, c) <= h
        assert int(day.low[i]) <= lo and h <= int(day.high[i])
        seen.append((h - lo, float(part.volume[-1])))
    assert seen == sorted(seen)  # range and volume only grow
    done = provisional_until(day, t0 + 60_000)
    assert int(done.high[i]) == int(day.high[i]) and int(done.close[i]) == int(day.close[i])


def test_live_reply_grows_as_the_clock_advances() -> None:
    up = upstream(None, now_ms=at(MON, 10, 0, 30))
    target = f"/v1/candles/minute/EUR-USD/BID?from={day_start_ms(MON)}"
    counts = []
    for _ in range(4):
        out = decode(up.reply(target).body, "EUR-USD", MON, live=True)
        assert np.all(out["flags"] & FLAG_LIVE) and out["flags"][-1] & FLAG_PROVISIONAL
        assert out["ts_ms"][-1] <= up.clock.now_ms()
        counts.append(len(out))
        up.clock.advance(5 * 60_000)
    assert counts == sorted(counts) and counts[-1] - counts[0] >= 12


def test_day_routes_follow_the_simulated_today() -> None:
    up = upstream(None, now_ms=at(MON, 12))
    past = up.reply("/v1/candles/minute/EUR-USD/BID/2025/3/2")
    assert past.status == 200 and len(decode(past.body, "EUR-USD", dt.date(2025, 3, 2))) > 0
    for target in (
        "/v1/candles/minute/EUR-USD/BID/2025/3/3",  # today is not final yet
        "/v1/candles/minute/EUR-USD/BID/2025/3/4",  # the future
        "/v1/candles/minute/EUR-USD/BID/2025/03/02",  # zero padded
        "/v1/candles/minute/NOPE-XXX/BID/2025/3/2",  # unknown instrument
        "/v1/candles/minute/EUR-USD/BID/1999/12/31",  # before the history start
        "/v1/nothing",
    ):
        assert up.reply(target).status == 404, target
    assert up.reply("/v1/candles/minute/EUR-USD/BID/2025/2/30").status == 400
    assert up.reply("/v1/candles/minute/EUR-USD/BID?from=abc").status == 400
    future = up.reply(f"/v1/candles/minute/EUR-USD/BID?from={at(MON, 13)}")
    assert future.status == 200 and len(decode(future.body, "EUR-USD", MON, live=True)) == 0


def test_revise_fault_changes_content_validly() -> None:
    up = upstream(None, now_ms=at(MON, 12))
    target = "/v1/candles/minute/EUR-USD/BID/2025/2/27"
    before = up.reply(target).body
    up.add_fault(Fault("revise", "*/EUR-USD/BID/2025/2/27"))
    after = up.reply(target).body
    assert after != before
    old, new = (
        decode(before, "EUR-USD", dt.date(2025, 2, 27)),
        decode(after, "EUR-USD", dt.date(2025, 2, 27)),
    )
    assert np.array_equal(old["ts_ms"], new["ts_ms"])
    assert np.allclose(new["close"] - old["close"], 1e-5)
    assert up.reply("/v1/candles/minute/EUR-USD/BID/2025/2/26").body == up.day_body(
        "EUR-USD", "BID", dt.date(2025, 2, 26)
    )


def test_fault_spec_parsing() -> None:
    f = Fault.parse("503:*/EUR-USD/*:count=3")
    assert (f.kind, f.pattern, f.count) == ("503", "*/EUR-USD/*", 3)
    f = Fault.parse("slow:*:p=0.5:delay=0.2")
    assert (f.probability, f.count, f.delay_s) == (0.5, None, 0.2)
    assert Fault.parse("429").pattern == "*"
    for bad in ("boom", "503:*:count=x", "503:*:colour=red", "503:*:p=2"):
        with pytest.raises(ValueError):
            Fault.parse(bad)


def test_fault_plan_counts_and_probability_are_seeded() -> None:
    def fired(seed: int) -> list[bool]:
        plan = FaultPlan(seed)
        plan.add(Fault("500", "/a*", count=None, probability=0.3))
        return [plan.pick("/abc") is not None for _ in range(200)]

    assert fired(1) == fired(1) and fired(1) != fired(2)
    assert 30 < sum(fired(1)) < 90
    plan = FaultPlan(1)
    plan.add(Fault("503", "/x", count=2))
    assert [plan.pick("/x") is not None for _ in range(4)] == [True, True, False, False]
    assert plan.pick("/y") is None


def test_sim_clock_runs_at_speed_and_can_be_set() -> None:
    wall = [100.0]
    clock = SimClock(at(MON), speed=60.0, wall=lambda: wall[0])
    wall[0] += 2.0
    assert clock.now_ms() == at(MON, 0, 2)
    clock.advance(3_600_000)
    assert clock.now_ms() == at(MON, 1, 2)
    clock.set(at(MON, 23, 59), speed=0.0)
    wall[0] += 100.0
    assert clock.now_ms() == at(MON, 23, 59) and clock.today() == MON


def test_generate_cache_writes_the_raw_cache_layout(tmp_path: Path) -> None:
    start, end = dt.date(2024, 12, 27), dt.date(2025, 1, 2)
    n = generate_cache(tmp_path, "EUR-USD", "BID", start, end, seed=1, real_dir=None, durable=False)
    assert n == 7
    cache = RawCache(tmp_path, today=lambda: dt.date.max)
    assert list(cache.days("EUR-USD", "BID")) == [start + dt.timedelta(days=i) for i in range(7)]
    gen = RandomWalkGenerator(seed=1)
    for day in cache.days("EUR-USD", "BID"):
        body = cache.get("EUR-USD", "BID", day)
        assert body == encode_candles(
            gen.day("EUR-USD", "BID", day), empty_timestamp_ms=day_start_ms(day)
        )
        decode(body, "EUR-USD", day)


# --- the real data behind the fake ----------------------------------------------------------


@pytest.mark.real_data
def test_recorded_bodies_are_served_byte_for_byte(real_data: Path) -> None:
    up = upstream(real_data, now_ms=at(dt.date(2026, 8, 1)))
    for (symbol, side, day), name in RECORDED.items():
        target = f"/v1/candles/minute/{symbol}/{side}/{day.year}/{day.month}/{day.day}"
        assert up.reply(target).body == (real_data / "dukascopy-json" / name).read_bytes()


@pytest.mark.real_data
def test_encoder_reproduces_a_real_response_byte_for_byte(real_data: Path) -> None:
    real = (real_data / "dukascopy-json/bp.markets.ingest/EUR-USD_20190204.json").read_bytes()
    bars = decode_points(real)
    assert encode_candles(bars, empty_timestamp_ms=day_start_ms(dt.date(2019, 2, 4))) == real


@pytest.mark.real_data
@pytest.mark.parametrize("day", [dt.date(2019, 2, 4), dt.date(2019, 2, 5)])
def test_histdata_converted_to_utc_equals_dukascopy_bi5(real_data: Path, day: dt.date) -> None:
    """The README finding: HistData clock = Berlin local − 6 h; converted, it is Dukascopy BID."""
    gen = HistDataGenerator(real_data / "histdata-m1", seed=1)
    bars = gen.day("EUR-USD", "BID", day)
    oracle = bi5.read_candle_points(bi5.day_path(real_data / "dukascopy-bi5", "EURUSD", day))
    traded = oracle[oracle["volume"] > 0]
    assert (bars.ts_ms - day_start_ms(day)).tolist() == (
        traded["t_s"].astype(np.int64) * 1000
    ).tolist()
    for key in ("open", "high", "low", "close"):
        assert getattr(bars, key).tolist() == traded[key].astype(np.int64).tolist()


@pytest.mark.real_data
def test_histdata_summer_day_uses_daylight_time(real_data: Path) -> None:
    """In summer 2019 the shift is +4 h: Monday 2019-07-01 trades from 00:00 UTC."""
    series = histdata.load(str(real_data / "histdata-m1"), "EUR-USD")
    assert series is not None
    sunday = dt.date(2019, 6, 30)
    a, _ = series.day_index[(sunday - dt.date(1970, 1, 1)).days]
    first = (int(series.ts_ms[a]) - day_start_ms(sunday)) // 60_000
    assert 21 * 60 <= first < 21 * 60 + 10  # Sunday open 17:00 New York = 21:00 UTC


@pytest.mark.real_data
@pytest.mark.parametrize("symbol", ["EUR-USD", "GBP-USD", "USD-JPY", "XAU-USD"])
def test_histdata_tiling_any_year_decodes(real_data: Path, symbol: str) -> None:
    gen = HistDataGenerator(real_data / "histdata-m1", seed=1)
    for day in (
        dt.date(2007, 3, 5),
        dt.date(2016, 2, 29),
        dt.date(2030, 11, 12),
        dt.date(2024, 6, 8),
    ):
        src = gen.source_day(symbol, day)
        assert src is not None and src.weekday() == day.weekday() and src.year in (2018, 2019)
        for side in ("BID", "ASK"):
            body = encode_candles(gen.day(symbol, side, day), empty_timestamp_ms=day_start_ms(day))
            out = decode(body, symbol, day, side=side)
            if day.weekday() == 5:
                assert len(out) == 0
            else:
                assert len(out) > 1000


@pytest.mark.real_data
def test_real_recorded_day_served_live(real_data: Path) -> None:
    """A ``?from=`` response built from the recorded Friday decodes as a live day."""
    friday = dt.date(2026, 7, 10)
    up = upstream(real_data, now_ms=at(friday, 12, 30, 20))
    reply = up.reply(f"/v1/candles/minute/EUR-USD/BID?from={day_start_ms(friday)}")
    out = decode(reply.body, "EUR-USD", friday, live=True)
    real = decode(
        (real_data / "dukascopy-json/candles-minute-EUR-USD-BID-2026-7-10.json").read_bytes(),
        "EUR-USD",
        friday,
    )
    n = len(out)
    assert out["ts_ms"][-1] == at(friday, 12, 30)
    assert out[: n - 1].tobytes() != b"" and np.array_equal(
        out["open"][: n - 1], real["open"][: n - 1]
    )
    assert np.array_equal(out["close"][: n - 1], real["close"][: n - 1])
    assert out["flags"][-1] == FLAG_LIVE | FLAG_PROVISIONAL
    assert json.loads(reply.body)["timestamp"] == day_start_ms(friday)
