"""Days for any instrument of the universe, made from the real HistData series.

:class:`UniverseGenerator` gives every one of ``config/universe.toml``'s 42 instruments (and
any other symbol) plausible days in Dukascopy's shapes, each a pure function of (seed,
symbol, side, day):

- **Source.** The real HistData 1m bars of the nearest kind (``barstream.fake.histdata``):
  JPY pairs from USD-JPY, metals and commodities from XAU-USD, GBP pairs from GBP-USD, the
  rest from EUR-USD. A day maps to a source day as :class:`HistDataGenerator` maps it, moved
  by a per-symbol whole number of weeks, so instruments of one source do not move together.
- **Re-based.** Prices are scaled to the instrument's level (``LEVELS``; EUR-USD stays
  itself) and rounded to its point size (``barstream.fake.bars.point_decimals``: 1e-5, 1e-3
  for JPY pairs, metals, indices and commodities, 1e-1 … for crypto). Rounding is monotone,
  so every bar keeps low <= open, close <= high.
- **Sessions.** Forex and metals keep the FX week (Sunday 17:00 to Friday 17:00 New York);
  indices trade on weekdays inside a session with a daily break (``INDEX_HOURS``, UTC); crypto
  trades every minute of every day, weekends included (a weekend day is made of a Monday to
  Thursday source day, which is whole).
- ASK = BID + a spread as the other generators make it.
"""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path
from typing import Final

import numpy as np

from barstream.fake import histdata
from barstream.fake.bars import DayBars, empty_bars, point_decimals
from barstream.fake.generators import RandomWalkGenerator, _day_rng, _spread_points, _volumes
from barstream.services.downloader.source import day_start_ms
from barstream.shared.timeframe import MINUTE_MS

#: Price level of each instrument (what its re-based series moves around).
LEVELS: Final = {
    "EUR-USD": 1.15, "GBP-USD": 1.30, "USD-JPY": 110.0, "USD-CHF": 0.98, "USD-CAD": 1.32,
    "AUD-USD": 0.72, "NZD-USD": 0.67, "EUR-GBP": 0.88, "EUR-JPY": 127.0, "EUR-CHF": 1.12,
    "EUR-AUD": 1.60, "EUR-CAD": 1.51, "EUR-NZD": 1.70, "GBP-JPY": 143.0, "GBP-CHF": 1.28,
    "GBP-AUD": 1.82, "AUD-JPY": 78.0, "AUD-CAD": 0.95, "AUD-NZD": 1.07, "CAD-JPY": 83.0,
    "CHF-JPY": 112.0, "NZD-JPY": 73.0, "XAU-USD": 1400.0, "XAG-USD": 16.5,
    "AUS.IDX-AUD": 6500.0, "CHE.IDX-CHF": 10000.0, "DEU.IDX-EUR": 12500.0,
    "DOLLAR.IDX-USD": 97.0, "ESP.IDX-EUR": 9200.0, "EUS.IDX-EUR": 3500.0,
    "FRA.IDX-EUR": 5500.0, "GBR.IDX-GBP": 7300.0, "HKG.IDX-HKD": 27000.0,
    "JPN.IDX-JPY": 21500.0, "USA30.IDX-USD": 26500.0, "USA500.IDX-USD": 2950.0,
    "USATECH.IDX-USD": 7800.0, "BTC-USD": 9000.0, "ETH-USD": 200.0, "LTC-USD": 60.0,
    "BRENT.CMD-USD": 64.0, "LIGHT.CMD-USD": 57.0,
}  # fmt: skip
#: Index sessions (UTC minutes of the day, weekdays only): open → close, a break until the
#: next open. US indices trade nearly around the clock, the others their exchange's day.
INDEX_HOURS: Final = {"USA": (22 * 60, 21 * 60), "DOLLAR": (0, 22 * 60)}
DEFAULT_INDEX_HOURS: Final = (7 * 60, 20 * 60 + 30)
CRYPTO: Final = ("BTC", "ETH", "LTC")


def source_symbol(symbol: str) -> str:
    """The HistData series an instrument is made from."""
    if symbol.endswith("JPY") and ".IDX" not in symbol:
        return "USD-JPY"
    if symbol.startswith(("XAU", "XAG")) or ".CMD" in symbol:
        return "XAU-USD"
    if symbol.startswith("GBP"):
        return "GBP-USD"
    return "EUR-USD"


def kind(symbol: str) -> str:
    if ".IDX" in symbol:
        return "index"
    if symbol.startswith(CRYPTO):
        return "crypto"
    return "fx"


class UniverseGenerator:
    """Any instrument's days from the real HistData series (module docstring)."""

    def __init__(self, folder: Path, *, seed: int = 1) -> None:
        self.folder = folder
        self.seed = seed
        self.fallback = RandomWalkGenerator(seed)

    def _source_day(self, series: histdata.HistSeries, symbol: str, day: dt.date) -> dt.date:
        if kind(symbol) == "crypto" and day.weekday() >= 4:  # Fri-Sun from a whole weekday
            day -= dt.timedelta(days=day.weekday() - (zlib.crc32(day.isoformat().encode()) % 4))
        years = sorted({series.first_day.year, series.last_day.year})
        year = years[day.year % len(years)]
        try:
            anchor = day.replace(year=year)
        except ValueError:  # 29 February
            anchor = dt.date(year, 2, 28)
        delta = (day.weekday() - anchor.weekday() + 3) % 7 - 3
        weeks = zlib.crc32(symbol.encode()) % 9 - 4  # per symbol: -4 … +4 weeks
        src = anchor + dt.timedelta(days=delta + 7 * weeks)
        while src < series.first_day:
            src += dt.timedelta(days=7)
        while src > series.last_day:
            src -= dt.timedelta(days=7)
        return src

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars:
        decimals = point_decimals(symbol)
        source = source_symbol(symbol)
        series = histdata.load(str(self.folder), source)
        if series is None:
            return self.fallback.day(symbol, side, day)
        src = self._source_day(series, symbol, day)
        a, b = series.day_index.get((src - dt.date(1970, 1, 1)).days, (0, 0))
        ts = series.ts_ms[a:b] - day_start_ms(src) + day_start_ms(day)
        keep = self._open(symbol, day, (ts - day_start_ms(day)) // MINUTE_MS)
        ts, ohlc = ts[keep], series.ohlc[a:b][keep]
        if not len(ts):
            return empty_bars(decimals)
        src_level = LEVELS[source]
        factor = LEVELS.get(symbol, src_level) / src_level * 10.0 ** (decimals - series.decimals)
        pts = np.round(ohlc * factor).astype(np.int64)
        rng = _day_rng(self.seed, symbol, "BID", day, salt=2)
        bars = DayBars(
            decimals, ts, pts[:, 0], pts[:, 1], pts[:, 2], pts[:, 3],
            _volumes(rng, pts[:, 1], pts[:, 2], decimals),
        )  # fmt: skip
        return bars.shifted(_spread_points(bars)) if side == "ASK" else bars

    @staticmethod
    def _open(symbol: str, day: dt.date, minute: np.ndarray) -> np.ndarray:
        """Which minutes of the day (UTC minute indexes) the instrument trades."""
        k = kind(symbol)
        if k == "crypto" or k == "fx":  # fx: the source's own FX week
            return np.ones(len(minute), dtype=bool)
        if day.weekday() >= 5:
            return np.zeros(len(minute), dtype=bool)
        prefix = symbol.split(".")[0]
        start, end = next(
            (h for p, h in INDEX_HOURS.items() if prefix.startswith(p)), DEFAULT_INDEX_HOURS
        )
        if start < end:
            mask: np.ndarray = (minute >= start) & (minute < end)
        else:  # open across midnight: the break is end … start
            mask = (minute < end) | (minute >= start)
        return mask
