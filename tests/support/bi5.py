"""Read Dukascopy ``*_candles_*.bi5`` files — an independent oracle for the JSON decoder.

A candle bi5 file is LZMA-compressed big-endian records ``>5i1f``: seconds from the start of
the file's period, open, close, low, high (integer points — note the O, C, L, H order) and a
float32 volume. Candle files are dense: minutes without ticks are flat bars with volume 0.
Folder months in the datafeed layout count from zero (``EURUSD/2019/01/04`` = 4 Feb 2019).
"""

from __future__ import annotations

import datetime as dt
import lzma
from pathlib import Path

import numpy as np

from barstream.shared.record import RECORD_DTYPE

BI5_CANDLE_DTYPE = np.dtype(
    [
        ("t_s", ">i4"),
        ("open", ">i4"),
        ("close", ">i4"),
        ("low", ">i4"),
        ("high", ">i4"),
        ("volume", ">f4"),
    ]
)


def read_candle_points(path: Path) -> np.ndarray:
    """The raw records of a candle bi5 file (integer points, big-endian fields)."""
    data = lzma.decompress(path.read_bytes())
    if len(data) % BI5_CANDLE_DTYPE.itemsize:
        raise ValueError(f"{path}: {len(data)} bytes is not a whole number of 24-byte records")
    return np.frombuffer(data, dtype=BI5_CANDLE_DTYPE)


def read_candles(path: Path, *, period_start: dt.datetime, point: float = 1e-5) -> np.ndarray:
    """A candle bi5 file as RECORD_DTYPE (prices = points × point, ``ts_ms`` UTC)."""
    raw = read_candle_points(path)
    out = np.zeros(len(raw), dtype=RECORD_DTYPE)
    start_ms = int(period_start.replace(tzinfo=dt.UTC).timestamp() * 1000)
    out["ts_ms"] = start_ms + raw["t_s"].astype(np.int64) * 1000
    decimals = round(-np.log10(point))
    for key in ("open", "high", "low", "close"):
        out[key] = raw[key].astype(np.int64) / 10.0**decimals
    out["volume"] = raw["volume"].astype(np.float64)
    out["src_count"] = 1
    return out


def day_path(root: Path, symbol: str, day: dt.date, side: str = "BID") -> Path:
    """Datafeed path of a day's 1m candle file (month folder counts from zero)."""
    return (
        root
        / symbol
        / f"{day.year:04d}"
        / f"{day.month - 1:02d}"
        / f"{day.day:02d}"
        / f"{side}_candles_min_1.bi5"
    )
