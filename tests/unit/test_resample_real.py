"""Real oracle: Dukascopy's own 1h candles equal our 1h bars resampled from its 1m candles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from barstream.services.resampler.resample import resample, resample_all
from barstream.shared.alignment import UTC
from barstream.shared.timeframe import DAY_MS, Timeframe
from tests.support.bi5 import day_path, read_candle_points, read_candles

pytestmark = pytest.mark.real_data
DAYS = (dt.date(2019, 2, 4), dt.date(2019, 2, 5))


def minutes(real_data: Path) -> np.ndarray:
    days = []
    for day in DAYS:
        m = read_candles(
            day_path(real_data / "dukascopy-bi5", "EURUSD", day),
            period_start=dt.datetime.combine(day, dt.time(0)),
        )
        days.append(m[m["volume"] > 0])  # bi5 flat-fills minutes without ticks
    return np.concatenate(days)


def test_hourly_candles_equal_resampled_minutes(real_data: Path) -> None:
    m1 = minutes(real_data)
    bars = resample(m1, "1h", UTC)
    hour_file = real_data / "dukascopy-bi5" / "EURUSD" / "2019" / "01" / "BID_candles_hour_1.bi5"
    hours = read_candles(hour_file, period_start=dt.datetime(2019, 2, 1))
    points = read_candle_points(hour_file)
    lo = int(dt.datetime(2019, 2, 4, tzinfo=dt.UTC).timestamp() * 1000)
    hi = lo + 2 * DAY_MS
    want = (hours["ts_ms"] >= lo) & (hours["ts_ms"] < hi) & (hours["volume"] > 0)
    assert int(want.sum()) == 48 and len(bars) == 48
    assert bars["ts_ms"].tolist() == hours["ts_ms"][want].tolist()
    for ours, field in (("open", "open"), ("high", "high"), ("low", "low"), ("close", "close")):
        got = np.rint(bars[ours] * 1e5).astype(np.int64)  # compare integer points
        assert got.tolist() == points[field][want].astype(np.int64).tolist(), field
    # hour volumes are float32: equal to float32 rounding of our float64 sum of minute volumes
    rel = np.abs(bars["volume"] / hours["volume"][want] - 1)
    assert float(rel.max()) < 4 * 2.0**-24, float(rel.max())
    assert int(bars["src_count"].sum()) == len(m1)
    # the cascade (1m → 5m → 15m → 30m → 1h) gives the same prices and sources
    cascade = resample_all(m1, ["1h"], UTC)[Timeframe.parse("1h")]
    for f in ("ts_ms", "open", "high", "low", "close", "src_offset", "src_count", "flags"):
        assert np.array_equal(cascade[f], bars[f]), f
