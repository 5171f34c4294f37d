"""barstream.fake.universe: every instrument of config/universe.toml gets days in the JSON
API's exact format that the transformer accepts, with its point size, its trading hours
(FX week, index sessions with a daily break, crypto on weekends) and its own price level."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from barstream.fake.bars import point_decimals
from barstream.fake.encoding import encode_candles
from barstream.fake.universe import LEVELS, UniverseGenerator, kind
from barstream.paths import real_data_dir
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.transform import decode_candles
from barstream.shared import config as config_mod
from tests.support.ops import REPO

HISTDATA = real_data_dir() / "histdata-m1"
WEEK = [dt.date(2019, 3, 4) + dt.timedelta(days=i) for i in range(7)]  # Monday … Sunday


@pytest.fixture(scope="module")
def gen() -> UniverseGenerator:
    if not HISTDATA.is_dir():
        pytest.skip(f"{HISTDATA} is absent (../shared/data/real): no series to re-base")
    return UniverseGenerator(HISTDATA, seed=1)


def universe() -> list[str]:
    return config_mod.load(REPO / "config" / "universe.toml").pipeline.symbols


@pytest.mark.parametrize("symbol", universe())
def test_every_instrument_decodes_on_its_grid_and_hours(
    gen: UniverseGenerator, symbol: str
) -> None:
    minutes = []
    for day in WEEK:
        for side in ("BID", "ASK"):
            bars = gen.day(symbol, side, day)
            body = encode_candles(bars, empty_timestamp_ms=day_start_ms(day))
            got = decode_candles(
                body, symbol=symbol, side=side, day_ms=day_start_ms(day), live=False, src_offset=0
            )
            assert len(got) == len(bars)
            assert bars.decimals == point_decimals(symbol)
            if len(bars):
                assert (bars.low <= np.minimum(bars.open, bars.close)).all()
                assert (bars.high >= np.maximum(bars.open, bars.close)).all()
                level = float(np.median(bars.close)) / 10**bars.decimals
                assert 0.5 < level / LEVELS[symbol] < 2.0, (symbol, level)
        bid = gen.day(symbol, "BID", day)
        minutes.append(set(((bid.ts_ms - day_start_ms(day)) // 60_000).tolist()))
    saturday, sunday = minutes[5], minutes[6]
    if kind(symbol) == "crypto":
        assert len(saturday) > 1000 and len(sunday) > 1000  # trades on weekends
    else:
        assert not saturday
    if kind(symbol) == "index":
        assert not sunday
        wednesday = minutes[2]
        # a daily break: an hour of the weekday without a bar
        assert any(not wednesday & set(range(h * 60, h * 60 + 60)) for h in range(24)), symbol
    if kind(symbol) == "fx":
        assert sunday and min(sunday) >= 20 * 60  # the FX week opens Sunday evening (UTC)


def test_instruments_of_one_source_do_not_move_together(gen: UniverseGenerator) -> None:
    day = dt.date(2019, 3, 6)
    a = gen.day("EUR-USD", "BID", day)
    b = gen.day("USD-CHF", "BID", day)
    ra = np.diff(a.close[:600].astype(float))
    rb = np.diff(b.close[:600].astype(float))
    assert abs(np.corrcoef(ra, rb)[0, 1]) < 0.9
    assert gen.day("EUR-USD", "BID", day).close.tobytes() == a.close.tobytes()  # pure
