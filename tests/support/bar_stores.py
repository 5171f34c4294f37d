"""Real committed stores laid out as the pipeline keeps them (``data_dir/<service>/SYMBOL/
SIDE/TF.bars`` + the service's checkpoint), written with the project's StoreSet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from barstream.services.resampler.resample import resample
from barstream.shared.header import StoreMeta
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.storeset import StoreSet
from tests.support.minutes import random_minutes, utc_ms

START_MS = utc_ms(2026, 5, 4)


def write_stores(data_dir: Path, stores: dict[str, np.ndarray], service: str = "gateway") -> None:
    """Commit ``stores`` (key → records) as ``service``'s stores under ``data_dir``."""
    ss = StoreSet.open(data_dir / service, service)
    for key, records in stores.items():
        ss.ensure(StoreMeta.from_key(key)).append(records)
        ss.touch(key)
    ss.commit()
    ss.close()


def minutes(seed: int, days: int) -> np.ndarray:
    """Seeded 1m records (integer prices and volumes: sums are exact) over ``days`` days
    from ``START_MS``, the last minute provisional (the forming one)."""
    m1 = random_minutes(np.random.default_rng(seed), START_MS, days * 1440)
    m1["src_offset"] = np.arange(len(m1))
    m1["flags"][-1] |= FLAG_PROVISIONAL
    return m1


def gateway_dir(data_dir: Path, m1: np.ndarray, symbol: str = "EUR-USD") -> dict[str, np.ndarray]:
    """A gateway data dir holding ``m1`` and barstream's own 1h resample of it, BID; returns
    the records by timeframe."""
    h1 = resample(m1, "1h")
    write_stores(data_dir, {f"{symbol}/BID/1m": m1, f"{symbol}/BID/1h": h1})
    return {"1m": m1, "1h": h1}
