"""Dukascopy's candle JSON for one day (or the live run of bars), byte for byte.

The encoding, decided and kept stable (``encode_candles`` reproduces a recorded response
exactly; a test holds it to that)::

    {"timestamp":T0,"multiplier":M,"open":O,"high":H,"low":L,"close":C,"shift":60000,
     "times":[0,dt1,...],"opens":[0,d1,...],"highs":[...],"lows":[...],"closes":[...],
     "volumes":[v0,v1,...]}

- Keys in this order, no spaces. ``timestamp`` is the first bar's time in ms and ``times``
  its minute deltas (``times[0]`` is 0); ``open``…``close`` are the first bar's prices and the
  arrays their deltas in points.
- ``multiplier`` is the point size written as Java prints a double: ``1.0E-5`` (5 decimals),
  ``0.001`` for JPY pairs, metals and indices, ``0.1`` for crypto.
- An empty day has ``timestamp`` = the requested start (day start, or ``from``), ``null``
  prices and empty arrays.
"""

from __future__ import annotations

import json
import math

import numpy as np

from barstream.fake.bars import DayBars, empty_bars
from barstream.shared.timeframe import MINUTE_MS


def encode_candles(bars: DayBars, *, empty_timestamp_ms: int) -> bytes:
    """Dukascopy's candle JSON for ``bars`` (``empty_timestamp_ms`` when there are none)."""
    mult = _java_multiplier(bars.decimals)
    if len(bars) == 0:
        nulls = '"open":null,"high":null,"low":null,"close":null'
        arrays = '"times":[],"opens":[],"highs":[],"lows":[],"closes":[],"volumes":[]'
        text = f'{{"timestamp":{empty_timestamp_ms},"multiplier":{mult},{nulls},"shift":60000,{arrays}}}'
        return text.encode()
    scale = 10**bars.decimals
    first = [repr(int(a[0]) / scale) for a in (bars.open, bars.high, bars.low, bars.close)]
    t0 = int(bars.ts_ms[0])
    times = np.diff(bars.ts_ms, prepend=t0) // MINUTE_MS
    parts = [
        f'{{"timestamp":{t0},"multiplier":{mult},"open":{first[0]},"high":{first[1]},'
        f'"low":{first[2]},"close":{first[3]},"shift":60000,"times":[',
        _join_ints(times),
    ]
    for key, values in (
        ("opens", bars.open),
        ("highs", bars.high),
        ("lows", bars.low),
        ("closes", bars.close),
    ):
        parts.append(f'],"{key}":[')
        parts.append(_join_ints(np.diff(values, prepend=values[0])))
    parts.append('],"volumes":[')
    parts.append(",".join(map(repr, bars.volume.tolist())))
    parts.append("]}")
    return "".join(parts).encode()


def decode_points(body: bytes) -> DayBars:
    """A candle-JSON body back into integer points (for recorded files; trusts its input)."""
    obj = json.loads(body)
    decimals = -round(math.log10(obj["multiplier"]))
    if not obj["times"]:
        return empty_bars(decimals)
    scale = 10**decimals
    ts = obj["timestamp"] + np.cumsum(np.array(obj["times"], dtype=np.int64)) * obj["shift"]
    cols = [
        round(obj[k] * scale) + np.cumsum(np.array(obj[k + "s"], dtype=np.int64))
        for k in ("open", "high", "low", "close")
    ]
    volumes = np.array(obj["volumes"], dtype=np.float64)
    return DayBars(decimals, ts, cols[0], cols[1], cols[2], cols[3], volumes)


def _java_multiplier(decimals: int) -> str:
    return f"{10.0**-decimals}" if decimals <= 3 else f"1.0E-{decimals}"


def _join_ints(values: np.ndarray) -> str:
    return ",".join(map(str, values.tolist()))
