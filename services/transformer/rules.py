"""The validation rules of a candle day: each a function raising ``PayloadInvalid``.

Contract
--------
The whole payload is rejected (nothing returned) when any rule fails. The error's ``field``
is the JSON key, ``index`` the array position (bar number) where known:

========================  ===============================================  ==================
rule                      failure                                          field / index
========================  ===============================================  ==================
body                      empty, HTML page, malformed or truncated JSON    ``body`` / byte
types, keys               missing key, wrong type, number out of range     key / array pos
multiplier                not a power of ten in [1e-8, 1]                  ``multiplier``
shift                     not 60000 (minute candles)                       ``shift``
timestamp                 not a whole minute                               ``timestamp``
first-bar prices          null on a non-empty day, off the multiplier grid ``open`` … ``close``
array lengths             any array not as long as ``times``               array / shorter len
times                     ``times[i] < 1`` for i > 0 (not strictly rising)  ``times`` / i
times                     a bar outside ``[day_ms, day_ms + DAY_MS)``      ``times`` / i
prices                    price <= 0                                       ``opens`` … / i
prices                    ``high < low``                                   ``highs`` / i
prices                    open or close outside ``[low, high]``            ``opens``/``closes``
volumes                   negative or not finite                           ``volumes`` / i
========================  ===============================================  ==================

The first three rows are ``candles.parse``'s; the others are here. NaN and Infinity are not
JSON: they fail as malformed JSON at their byte, located to their key and index; ``1e999``
overflows and fails as "number out of range" at its path. ``bulk`` applies the same rules
to many days at once (with :func:`first_points_or_none`, the non-raising twin of
:func:`first_points`) and falls back to these functions for the exact error.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from barstream.services.transformer.candles import MAX_POINTS, FastDay, Parsed, Where
from barstream.shared.timeframe import DAY_MS, MINUTE_MS

#: How far a first-bar price may sit from the multiplier grid, in points (float noise is ~1e-10).
GRID_TOLERANCE: Final = 1e-3
_PRICE_KEYS: Final = ("open", "high", "low", "close")
_ARRAY_KEYS: Final = ("opens", "highs", "lows", "closes", "volumes")


def multiplier_decimals(multiplier: float) -> int | None:
    """``k`` when ``multiplier == 10**-k`` for 0 <= k <= 8, else None."""
    if not (math.isfinite(multiplier) and multiplier > 0.0):
        return None
    k = -round(math.log10(multiplier))
    if not 0 <= k <= 8 or abs(multiplier * 10**k - 1.0) > 1e-9:
        return None
    return k


def check_header(p: Parsed, where: Where) -> int:
    """Multiplier, shift and timestamp; returns the price decimals."""
    decimals = multiplier_decimals(p.multiplier)
    if decimals is None:
        raise where.error(f"{p.multiplier!r} is not a power of ten in [1e-8, 1]", "multiplier")
    if p.shift != MINUTE_MS:
        raise where.error(f"{p.shift} is not {MINUTE_MS} (minute candles)", "shift")
    if p.timestamp % MINUTE_MS:
        raise where.error(f"{p.timestamp} is not a whole minute", "timestamp")
    return decimals


def check_lengths(p: Parsed, n: int, where: Where) -> None:
    for key in _ARRAY_KEYS:
        got = len(getattr(p, key))
        if got != n:
            raise where.error(f"{got} values for {n} times", key, min(got, n))


def first_points(p: Parsed, decimals: int, where: Where) -> tuple[int, int, int, int]:
    """The first bar's open, high, low, close in points (on the multiplier grid)."""
    scale = 10**decimals
    points: list[int] = []
    for key in _PRICE_KEYS:
        price = getattr(p, key)
        if price is None:
            raise where.error("null on a day with bars", key)
        if not math.isfinite(price):
            raise where.error(f"{price!r} is not a finite price", key)
        exact = price * scale
        rounded = round(exact)
        if abs(exact - rounded) > GRID_TOLERANCE:
            raise where.error(f"{price!r} is not a multiple of {p.multiplier!r}", key)
        if abs(rounded) > MAX_POINTS:
            raise where.error(f"{price!r} is {abs(rounded)} points, over {MAX_POINTS}", key)
        points.append(rounded)
    return points[0], points[1], points[2], points[3]


def first_points_or_none(p: FastDay, decimals: int) -> tuple[int, int, int, int] | None:
    """``first_points`` without the error (the caller falls back to decode day by day)."""
    scale = 10**decimals
    points: list[int] = []
    for price in (p.open, p.high, p.low, p.close):
        if price is None or not math.isfinite(price):
            return None
        exact = price * scale
        rounded = round(exact)
        if abs(exact - rounded) > GRID_TOLERANCE or abs(rounded) > MAX_POINTS:
            return None
        points.append(rounded)
    return points[0], points[1], points[2], points[3]


def check_times(times: np.ndarray, timestamp: int, day_ms: int, where: Where) -> None:
    if len(times) > 1:
        bad = np.flatnonzero(times[1:] < 1)
        if len(bad):
            i = int(bad[0]) + 1
            raise where.error(f"step {int(times[i])}: times must strictly increase", "times", i)
    # Steps are bounded (>= 1 after the first), so the series is monotonic: check both ends.
    start = timestamp + int(times[0]) * MINUTE_MS
    end = timestamp + int(times.sum()) * MINUTE_MS
    if not day_ms <= start < day_ms + DAY_MS:
        raise where.error(f"bar at {start} ms is outside the day", "times", 0)
    if end >= day_ms + DAY_MS:
        steps = np.cumsum(times) * MINUTE_MS + timestamp
        i = int(np.argmax(steps >= day_ms + DAY_MS))
        raise where.error(f"bar at {int(steps[i])} ms is outside the day", "times", i)


def check_prices(points: np.ndarray, where: Where) -> None:
    """One pass per rule over all bars; the failing index is searched only on failure."""
    opens, highs, lows, closes = points
    if points.min() <= 0:
        for row, key in enumerate(("opens", "highs", "lows", "closes")):
            _fail_first(points[row] <= 0, where, key, "price is not positive")
    if (highs - lows).min() < 0:
        _fail_first(highs < lows, where, "highs", "high is below low")
    if min((opens - lows).min(), (highs - opens).min()) < 0:
        _fail_first((opens < lows) | (opens > highs), where, "opens", "open is outside [low, high]")
    if min((closes - lows).min(), (highs - closes).min()) < 0:
        _fail_first(
            (closes < lows) | (closes > highs), where, "closes", "close is outside [low, high]"
        )


def check_volumes(volumes: np.ndarray, where: Where) -> None:
    # msgspec already rejected negatives and overflow; this guards the float conversion.
    _fail_first(~np.isfinite(volumes) | (volumes < 0), where, "volumes", "not a finite volume >= 0")


def _fail_first(bad: np.ndarray, where: Where, field: str, message: str) -> None:
    if bad.any():
        raise where.error(message, field, int(np.argmax(bad)))
