"""One day of 1m bars in integer points: the fake upstream's internal form of a day.

Every generator returns a :class:`DayBars`, the encoder turns one into Dukascopy's JSON, and
:func:`provisional_until` cuts one at a simulated instant. Prices are integer points on the
symbol's grid (``10**-decimals``, :func:`point_decimals`), so revisions and the ASK spread are
exact integer shifts; volumes are absolute floats. Arrays are never modified in place: every
operation returns a new ``DayBars``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from barstream.shared.timeframe import MINUTE_MS


def point_decimals(symbol: str) -> int:
    """Decimals of a symbol's price grid: multiplier = 10**-decimals."""
    if "JPY" in symbol or symbol.startswith(("XAU", "XAG")) or ".IDX" in symbol:
        return 3
    if ".CMD" in symbol:
        return 3
    if symbol.startswith(("BTC", "ETH")):
        return 1
    if symbol.startswith("LTC"):
        return 2
    return 5


@dataclass(frozen=True, slots=True)
class DayBars:
    """One day of 1m bars in integer points: the fake's internal form of a day."""

    decimals: int
    ts_ms: np.ndarray  # int64
    open: np.ndarray  # int64 points
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # float64, absolute

    def __len__(self) -> int:
        return len(self.ts_ms)

    def take(self, sel: slice | np.ndarray) -> DayBars:
        return DayBars(
            self.decimals,
            self.ts_ms[sel],
            self.open[sel],
            self.high[sel],
            self.low[sel],
            self.close[sel],
            self.volume[sel],
        )

    def shifted(self, points: int) -> DayBars:
        """Every price moved by ``points`` (a valid revision; spread for ASK)."""
        return DayBars(
            self.decimals,
            self.ts_ms,
            self.open + points,
            self.high + points,
            self.low + points,
            self.close + points,
            self.volume,
        )


def empty_bars(decimals: int) -> DayBars:
    z = np.zeros(0, dtype=np.int64)
    return DayBars(decimals, z, z, z, z, z, np.zeros(0))


def concat(decimals: int, pieces: Sequence[DayBars]) -> DayBars:
    """Consecutive days as one run of bars (the live answer may span several days)."""
    return DayBars(
        decimals,
        *(
            np.concatenate([getattr(p, k) for p in pieces])
            for k in ("ts_ms", "open", "high", "low", "close", "volume")
        ),
    )


def provisional_until(bars: DayBars, now_ms: int) -> DayBars:
    """The day as seen at ``now_ms``: finished minutes, plus the in-progress minute built
    along a fixed path open -> first extreme -> second extreme -> close."""
    done = int(np.searchsorted(bars.ts_ms, now_ms - MINUTE_MS, side="right"))
    shown = int(np.searchsorted(bars.ts_ms, now_ms, side="right"))
    if shown == done:
        return bars.take(slice(0, done))
    i = done
    frac = (now_ms - int(bars.ts_ms[i])) / MINUTE_MS
    o, h, lo, c = (int(a[i]) for a in (bars.open, bars.high, bars.low, bars.close))
    path = [o, lo, h, c] if c >= o else [o, h, lo, c]
    pos = frac * 3
    k = min(int(pos), 2)
    now_price = round(path[k] + (path[k + 1] - path[k]) * (pos - k))
    seen = [*path[: k + 1], now_price]
    part = bars.take(slice(0, i + 1))
    op, hp, lp, cp, vp = (
        a.copy() for a in (part.open, part.high, part.low, part.close, part.volume)
    )
    op[i], hp[i], lp[i], cp[i] = o, max(seen), min(seen), now_price
    vp[i] = round(float(bars.volume[i]) * frac, 2)
    return DayBars(bars.decimals, part.ts_ms, op, hp, lp, cp, vp)
