"""Decode one Dukascopy candle-JSON response into 1-minute records — the transformer's pure core.

Contract
--------
``decode_candles(body, symbol=, side=, day_ms=, live=, src_offset=)`` takes the raw bytes of one
``/v1/candles/minute/...`` response (its shape: ``candles``) and returns a ``RECORD_DTYPE``
array, or raises ``PayloadInvalid`` naming symbol, side, day, field and index (the rules and
what each failure names: ``rules``). It does no I/O, keeps no state and is deterministic: the
same bytes always give byte-identical records.

- bar time ``ts_ms[i] = timestamp + shift * cumsum(times)[i]``
- price ``x[i] = (round(x_first / multiplier) + cumsum(xs)[i]) / 10**decimals`` where
  ``multiplier = 10**-decimals``. All arithmetic is int64 *points*; the one conversion to
  float64 is a division by an exact power of ten, so every price is the float nearest to its
  decimal value (``1.14331``, not ``1.1433099999999999``).
- ``volumes`` are absolute values, copied as they are.
- an empty day (``"open": null`` and empty arrays, e.g. a Saturday) gives 0 records.

Output tail: ``src_offset`` = the downloader journal offset given, ``src_count`` = 1,
``flags``: every record of a live (current-day, ``?from=``) response has ``FLAG_LIVE`` and the
last one also ``FLAG_PROVISIONAL`` (the in-progress minute); the last record of a final day
has ``FLAG_DAY_END``. ``session`` and ``reserved`` are 0.

Many days at once: ``bulk.decode_days`` gives, for each day, exactly what ``decode_candles``
gives for it (its records, byte-identical, or its ``PayloadInvalid``).
"""

from __future__ import annotations

import numpy as np

from barstream.services.transformer.candles import Parsed, Where, parse
from barstream.services.transformer.rules import (
    check_header,
    check_lengths,
    check_prices,
    check_times,
    check_volumes,
    first_points,
)
from barstream.shared.record import FLAG_DAY_END, FLAG_LIVE, FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import MINUTE_MS


def decode_candles(
    body: bytes, *, symbol: str, side: str, day_ms: int, live: bool, src_offset: int
) -> np.ndarray:
    """Decode and validate one candle-JSON day; see the module docstring for the contract."""
    where = Where(symbol, side, day_ms)
    payload = parse(body, where)
    decimals = check_header(payload, where)
    n = len(payload.times)
    if n == 0:
        return np.zeros(0, dtype=RECORD_DTYPE)
    check_lengths(payload, n, where)
    first = first_points(payload, decimals, where)
    check_times(payload.times, payload.timestamp, day_ms, where)

    points = np.empty((4, n), dtype=np.int64)
    for row, deltas in enumerate((payload.opens, payload.highs, payload.lows, payload.closes)):
        deltas[0] += first[row]  # the arrays are ours: fold the first price into the cumsum
        np.cumsum(deltas, out=points[row])
    check_prices(points, where)
    check_volumes(payload.volumes, where)
    return _records(points, decimals, payload, live=live, src_offset=src_offset)


def _records(
    points: np.ndarray, decimals: int, payload: Parsed, *, live: bool, src_offset: int
) -> np.ndarray:
    out = np.zeros(points.shape[1], dtype=RECORD_DTYPE)
    ts_ms = np.cumsum(payload.times)
    ts_ms *= MINUTE_MS
    ts_ms += payload.timestamp
    out["ts_ms"] = ts_ms
    prices = points / float(10**decimals)  # the one conversion: exact decimal floats
    out["open"] = prices[0]
    out["high"] = prices[1]
    out["low"] = prices[2]
    out["close"] = prices[3]
    out["volume"] = payload.volumes
    out["src_offset"] = src_offset
    out["src_count"] = 1
    if live:
        out["flags"] = FLAG_LIVE
        out["flags"][-1] |= FLAG_PROVISIONAL
    else:
        out["flags"][-1] = FLAG_DAY_END
    return out
