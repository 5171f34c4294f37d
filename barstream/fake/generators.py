"""The fake's bar generators: each a pure function of (seed, symbol, side, day) to a day.

- :class:`RandomWalkGenerator`: a seeded random walk with the FX weekly shape (no bars on
  Saturday; Sunday opens and Friday closes at 17:00 New York, DST included); about 2 % of
  minutes have no bar; prices drift slowly around a per-symbol level.
- :class:`HistDataGenerator`: days tiled from the real HistData 1m bars (EUR-USD, GBP-USD,
  USD-JPY, XAU-USD). A requested day maps to a source day of the same weekday near the same
  day of year (of the series' first year for even years, its last year for odd years: 2018
  and 2019 in the recorded data), so any range of dates tiles deterministically; prices jump
  at day boundaries where consecutive days come from different source days. Other symbols
  fall back to the random walk.
- Both: ASK = BID + a small constant spread (2e-5 of the day's first open, at least one
  point); volumes are seeded lognormal, larger on wider bars.

:func:`make_generator` picks HistData when ``real_dir/histdata-m1`` exists, else the walk.
"""

from __future__ import annotations

import datetime as dt
import math
import zlib
from pathlib import Path
from typing import Final, Protocol
from zoneinfo import ZoneInfo

import numpy as np

from barstream.fake import histdata
from barstream.fake.bars import DayBars, empty_bars, point_decimals
from barstream.services.downloader.source import day_start_ms
from barstream.shared.timeframe import MINUTE_MS

_NEW_YORK: Final = ZoneInfo("America/New_York")


class BarGenerator(Protocol):
    """What the server asks of a generator: the final bars of one day."""

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars: ...


def _day_rng(seed: int, symbol: str, side: str, day: dt.date, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(
        [seed, zlib.crc32(symbol.encode()), zlib.crc32(side.encode()), day.toordinal(), salt]
    )


def _volumes(
    rng: np.random.Generator, high: np.ndarray, low: np.ndarray, decimals: int
) -> np.ndarray:
    """Plausible absolute volumes: lognormal, larger on wider bars, two decimals."""
    width = (high - low).astype(np.float64) / max(1, 10 ** (decimals - 5))
    vol = rng.lognormal(mean=3.5, sigma=0.6, size=len(high)) * (1.0 + width / 4.0)
    rounded: np.ndarray = np.round(vol, 2)
    return rounded


def _spread_points(bars: DayBars) -> int:
    return max(1, round(int(bars.open[0]) * 2e-5)) if len(bars) else 0


def _weekly_open_minutes(day: dt.date) -> np.ndarray:
    """Minute indexes of ``day`` (UTC) in which the FX market is open (Sun 17:00 → Fri 17:00 NY)."""
    noon = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    offset = noon.astimezone(_NEW_YORK).utcoffset()
    assert offset is not None
    edge = (17 * 60) - int(offset.total_seconds()) // 60  # 17:00 New York in UTC minutes
    wd = day.weekday()
    if wd == 5:
        return np.zeros(0, dtype=np.int64)
    if wd == 6:
        return np.arange(edge, 1440, dtype=np.int64)
    if wd == 4:
        return np.arange(0, edge, dtype=np.int64)
    return np.arange(1440, dtype=np.int64)


class RandomWalkGenerator:
    """Seeded random walk days with the FX weekly shape; a pure function of (seed, symbol, side, day)."""

    BASE: Final = {"XAU": 1300.0, "JPY": 110.0, "IDX": 12000.0, "BTC": 30000.0}

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars:
        decimals = point_decimals(symbol)
        minutes = _weekly_open_minutes(day)
        rng = _day_rng(self.seed, symbol, "BID", day)
        keep = rng.random(len(minutes)) > 0.02  # a few minutes without ticks
        minutes = minutes[keep]
        n = len(minutes)
        if n == 0:
            return empty_bars(decimals)
        base = next((v for k, v in self.BASE.items() if k in symbol), 1.15)
        ordinal = day.toordinal()
        level = base * (
            1 + 0.08 * math.sin(ordinal / 365.25 / 3 * 2 * math.pi) + 0.02 * math.sin(ordinal / 47)
        )
        scale = 10**decimals
        step = max(1.0, level * scale * 6e-5)  # about 0.6 pips a tick for EUR-USD
        ticks = np.cumsum(rng.normal(0.0, step, size=(n, 4)).reshape(-1)).reshape(n, 4)
        ticks = np.round(ticks + level * scale).astype(np.int64)
        bars = DayBars(
            decimals,
            day_start_ms(day) + minutes * MINUTE_MS,
            ticks[:, 0],
            ticks.max(axis=1),
            ticks.min(axis=1),
            ticks[:, 3],
            np.zeros(n),
        )
        bars = DayBars(
            decimals,
            bars.ts_ms,
            bars.open,
            bars.high,
            bars.low,
            bars.close,
            _volumes(rng, bars.high, bars.low, decimals),
        )
        return bars.shifted(_spread_points(bars)) if side == "ASK" else bars


class HistDataGenerator:
    """Days tiled from real HistData 1m bars; falls back to ``fallback`` for other symbols."""

    def __init__(
        self, folder: Path, *, seed: int = 1, fallback: BarGenerator | None = None
    ) -> None:
        self.folder = folder
        self.seed = seed
        self.fallback = fallback if fallback is not None else RandomWalkGenerator(seed)

    def source_day(self, symbol: str, day: dt.date) -> dt.date | None:
        """The HistData day that stands for ``day``: same weekday, near the same day of year."""
        series = histdata.load(str(self.folder), symbol)
        if series is None:
            return None
        years = sorted({series.first_day.year, series.last_day.year})
        year = years[day.year % len(years)]
        try:
            anchor = day.replace(year=year)
        except ValueError:  # 29 February
            anchor = dt.date(year, 2, 28)
        delta = (day.weekday() - anchor.weekday() + 3) % 7 - 3
        src = anchor + dt.timedelta(days=delta)
        while src < series.first_day:
            src += dt.timedelta(days=7)
        while src > series.last_day:
            src -= dt.timedelta(days=7)
        return src

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars:
        series = histdata.load(str(self.folder), symbol)
        src = self.source_day(symbol, day)
        if series is None or src is None:
            return self.fallback.day(symbol, side, day)
        a, b = series.day_index.get((src - dt.date(1970, 1, 1)).days, (0, 0))
        if a == b:
            return empty_bars(series.decimals)
        ohlc = series.ohlc[a:b]
        ts = series.ts_ms[a:b] - day_start_ms(src) + day_start_ms(day)
        rng = _day_rng(self.seed, symbol, "BID", day, salt=1)
        bars = DayBars(
            series.decimals,
            ts,
            ohlc[:, 0],
            ohlc[:, 1],
            ohlc[:, 2],
            ohlc[:, 3],
            _volumes(rng, ohlc[:, 1], ohlc[:, 2], series.decimals),
        )
        return bars.shifted(_spread_points(bars)) if side == "ASK" else bars


def make_generator(seed: int = 1, real_dir: Path | None = None) -> BarGenerator:
    """HistData tiling when ``real_dir/histdata-m1`` exists, else the seeded random walk."""
    if real_dir is not None and (real_dir / "histdata-m1").is_dir():
        return HistDataGenerator(real_dir / "histdata-m1", seed=seed)
    return RandomWalkGenerator(seed)
