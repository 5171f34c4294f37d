"""Seeded random 1m records for pure-core tests (integer prices in points, integer volumes,
so every sum is exact and cascade order cannot change a byte)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from barstream.shared.record import RECORD_DTYPE


def utc_ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc,arg-type]


def random_minutes(
    rng: np.random.Generator, start_ms: int, n_minutes: int, density: float = 0.7
) -> np.ndarray:
    """Records on a random subset (``density``) of ``n_minutes`` minutes from ``start_ms``,
    with random gaps of hours to days cut out."""
    keep = rng.random(n_minutes) < density
    for _ in range(int(rng.integers(0, 4))):  # a few long gaps
        a = int(rng.integers(0, n_minutes))
        keep[a : a + int(rng.integers(60, 3 * 1440))] = False
    ts = start_ms + np.flatnonzero(keep).astype(np.int64) * 60_000
    return records_at(rng, ts)


def records_at(rng: np.random.Generator, ts: np.ndarray) -> np.ndarray:
    n = len(ts)
    out = np.zeros(n, RECORD_DTYPE)
    out["ts_ms"] = ts
    o = rng.integers(100_000, 100_200, n)
    c = rng.integers(100_000, 100_200, n)
    out["open"] = o
    out["close"] = c
    out["high"] = np.maximum(o, c) + rng.integers(0, 5, n)
    out["low"] = np.minimum(o, c) - rng.integers(0, 5, n)
    out["volume"] = rng.integers(0, 1000, n)
    out["src_count"] = 1
    return out
