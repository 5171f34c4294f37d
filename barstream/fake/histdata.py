"""Real HistData 1m bars (the ``HISTDATA_COM_ASCII_{CODE}_M1*.zip`` files) as UTC bars in points.

HistData's clock is Europe/Berlin local time − 6 h: a bar stamped ``2019-02-04 00:00`` opened
at 06:00 Berlin time, which zoneinfo turns into UTC with that day's Berlin offset (so the DST
changes fall where Dukascopy has them; a test compares a converted day with Dukascopy's own
bi5 file). The fall-back hour's repeated minute is dropped. Prices are rounded onto the
symbol's point grid and each bar's high/low widened to cover its open and close.

:func:`load` reads every year of one symbol once per process (the lock serialises the many
server threads that may ask at the same time; the result is cached) and returns ``None``
for a symbol HistData does not carry or a folder without its files. The first and last UTC
days of the series are partial, so ``first_day``/``last_day`` exclude them.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from barstream.fake.bars import point_decimals
from barstream.shared.timeframe import DAY_MS, HOUR_MS, MINUTE_MS

_BERLIN: Final = ZoneInfo("Europe/Berlin")
#: Symbols HistData carries, and its name for each.
_CODES: Final = {
    "EUR-USD": "EURUSD",
    "GBP-USD": "GBPUSD",
    "USD-JPY": "USDJPY",
    "XAU-USD": "XAUUSD",
}


@dataclass(frozen=True, slots=True)
class HistSeries:
    """Every HistData bar of one symbol, UTC, sorted, in points, indexed by UTC day."""

    decimals: int
    ts_ms: np.ndarray
    ohlc: np.ndarray  # (n, 4) int64 points
    day_index: dict[int, tuple[int, int]]  # UTC day number -> (start, stop)
    first_day: dt.date
    last_day: dt.date


_LOCK: Final = threading.Lock()


def load(folder: str, symbol: str) -> HistSeries | None:
    """All HistData years of one symbol as UTC bars in points (loaded once per process, even
    when many server threads ask at the same time)."""
    with _LOCK:
        return _load_once(folder, symbol)


@functools.lru_cache(maxsize=8)
def _load_once(folder: str, symbol: str) -> HistSeries | None:
    code = _CODES.get(symbol)
    if code is None:
        return None
    zips = sorted(Path(folder).glob(f"HISTDATA_COM_ASCII_{code}_M1*.zip"))
    if not zips:
        return None
    decimals = point_decimals(symbol)
    chunks = []
    for zpath in zips:
        with zipfile.ZipFile(zpath) as zf:
            name = next(n for n in zf.namelist() if n.lower().endswith(".csv"))
            text = zf.read(name).replace(b" ", b",").replace(b";", b",")
        chunks.append(np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2))
    table = np.concatenate(chunks)
    ymd = table[:, 0].astype(np.int64)
    hms = table[:, 1].astype(np.int64)
    days = (
        (ymd // 10000 - 1970).astype("datetime64[Y]").astype("datetime64[M]")
        + (ymd // 100 % 100 - 1).astype("timedelta64[M]")
    ).astype("datetime64[D]") + (ymd % 100 - 1).astype("timedelta64[D]")
    # HistData clock + 6 h = Berlin local time; local -> UTC with the day's Berlin offset.
    local_ms = (
        days.astype(np.int64) * DAY_MS
        + (hms // 10000) * HOUR_MS
        + (hms // 100 % 100) * MINUTE_MS
        + 6 * HOUR_MS
    )
    local_day = local_ms // DAY_MS
    uniq, inverse = np.unique(local_day, return_inverse=True)
    offsets = np.array(
        [_berlin_offset_ms(dt.date.fromordinal(int(d) + 719163)) for d in uniq], dtype=np.int64
    )
    ts = local_ms - offsets[inverse]
    scale = 10**decimals
    ohlc = np.round(table[:, 2:6] * scale).astype(np.int64)
    ohlc[:, 1] = ohlc.max(axis=1)
    ohlc[:, 2] = ohlc.min(axis=1)
    order = np.argsort(ts, kind="stable")
    ts, ohlc = ts[order], ohlc[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]  # the DST fall-back hour can repeat a minute
    ts, ohlc = ts[keep], ohlc[keep]
    utc_day = ts // DAY_MS
    bounds = np.flatnonzero(np.diff(utc_day)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(ts)]])
    index = {int(utc_day[a]): (int(a), int(b)) for a, b in zip(starts, stops, strict=True)}
    epoch = dt.date(1970, 1, 1)
    first = epoch + dt.timedelta(days=int(utc_day[0]) + 1)  # the first and last days are partial
    last = epoch + dt.timedelta(days=int(utc_day[-1]) - 1)
    return HistSeries(decimals, ts, ohlc, index, first, last)


def _berlin_offset_ms(day: dt.date) -> int:
    offset = dt.datetime(day.year, day.month, day.day, 12, tzinfo=_BERLIN).utcoffset()
    assert offset is not None
    return int(offset.total_seconds() * 1000)
