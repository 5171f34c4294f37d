"""``barstream export``: a resampler store as CSV, MT4 CSV or Parquet (read-only).

Reads ``data_dir/resampler/SYMBOL/SIDE/TIMEFRAME.bars`` (the resampler also keeps the 1m
series) with ``Store.open(writable=False)`` + ``snapshot()``: a consistent copy even while the
resampler writes. Provisional (still open) bars are left out unless asked for.

Formats (prices are the shortest text that reads back as the same float64, ``X.0`` → ``X``;
volumes are rounded to 6 decimals first, since a bar's volume is a float sum):

- ``csv``: header ``time,open,high,low,close,volume``; ``time`` = bar open, UTC,
  ``YYYY-MM-DD HH:MM:SS``.
- ``mt4``: no header, ``YYYY.MM.DD,HH:MM,O,H,L,C,V`` with the bar open in MT4 server time
  (America/New_York + 7 h: GMT+2, GMT+3 while New York observes DST) — what MetaTrader's
  History Center imports.
- ``parquet``: ``ts_ms`` (int64), ``time`` (timestamp[ms, UTC]), open … volume, ``flags``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, TextIO
from zoneinfo import ZoneInfo

import numpy as np

from barstream.shared.alignment import MT4
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.store import Store
from barstream.shared.timeframe import HOUR_MS

NEW_YORK: Final = ZoneInfo("America/New_York")
MT4_SHIFT_MS: Final = MT4.clock_shift_ms  # server time = New York + 7 h
FORMATS: Final = ("csv", "mt4", "parquet")


def store_path(data_dir: Path, symbol: str, side: str, timeframe: str) -> Path:
    return data_dir / "resampler" / symbol / side / f"{timeframe}.bars"


def read(
    path: Path,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
    provisional: bool = False,
) -> np.ndarray:
    """Records with start_ms <= ts_ms < end_ms of the store at ``path`` (a copy)."""
    with Store.open(path, writable=False) as store:
        records = store.snapshot()
    ts = records["ts_ms"]
    lo = 0 if start_ms is None else int(np.searchsorted(ts, start_ms, side="left"))
    hi = len(records) if end_ms is None else int(np.searchsorted(ts, end_ms, side="left"))
    records = records[lo:hi]
    if not provisional:
        records = records[(records["flags"] & FLAG_PROVISIONAL) == 0]
    return records


def mt4_offset_ms(ts_ms: np.ndarray) -> np.ndarray:
    """Milliseconds to add to UTC to read MT4 server time (New York + 7 h), per record.
    zoneinfo decides per distinct UTC hour (DST switches fall on whole hours)."""
    hours, inverse = np.unique(ts_ms // HOUR_MS, return_inverse=True)
    offsets = np.empty(len(hours), dtype=np.int64)
    for i, h in enumerate(hours):
        when = dt.datetime.fromtimestamp(int(h) * 3600, dt.UTC).astimezone(NEW_YORK)
        off = when.utcoffset()
        assert off is not None
        offsets[i] = int(off.total_seconds() * 1000) + MT4_SHIFT_MS
    out: np.ndarray = offsets[inverse.reshape(-1)]
    return out


def mt4_labels(ts_ms: np.ndarray) -> tuple[list[str], list[str]]:
    """(``YYYY.MM.DD``, ``HH:MM``) MT4 server-time labels of UTC bar-open times."""
    local = (ts_ms + mt4_offset_ms(ts_ms)).astype("datetime64[ms]").astype("datetime64[m]")
    text = np.datetime_as_string(local, unit="m")  # 2026-03-08T17:00
    dates = [t[:10].replace("-", ".") for t in text]
    times = [t[11:16] for t in text]
    return dates, times


def utc_labels(ts_ms: np.ndarray) -> list[str]:
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]").astype("datetime64[s]"), unit="s")
    return [t.replace("T", " ") for t in text]


def num(x: float) -> str:
    """Shortest text that reads back as the same float64; integral values without ``.0``."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def _rows(records: np.ndarray) -> Iterator[tuple[str, str, str, str, str]]:
    cols = [records[k].tolist() for k in ("open", "high", "low", "close", "volume")]
    for o, h, lo, c, v in zip(*cols, strict=True):
        # Prices are exact decimals already; a volume is a float sum of decimal volumes, so
        # it is rounded to 6 decimals (11055.26, not 11055.259999999998).
        yield num(o), num(h), num(lo), num(c), num(round(v, 6))


def csv_lines(records: np.ndarray) -> Iterable[str]:
    yield "time,open,high,low,close,volume\n"
    for when, row in zip(utc_labels(records["ts_ms"]), _rows(records), strict=True):
        yield f"{when},{','.join(row)}\n"


def mt4_lines(records: np.ndarray) -> Iterable[str]:
    dates, times = mt4_labels(records["ts_ms"])
    for d, t, row in zip(dates, times, _rows(records), strict=True):
        yield f"{d},{t},{','.join(row)}\n"


def write_text(lines: Iterable[str], out: TextIO) -> None:
    for line in lines:
        out.write(line)


def write_parquet(records: np.ndarray, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "ts_ms": pa.array(records["ts_ms"], pa.int64()),
            "time": pa.array(records["ts_ms"], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
            **{
                k: pa.array(records[k], pa.float64())
                for k in ("open", "high", "low", "close", "volume")
            },
            "flags": pa.array(records["flags"], pa.uint16()),
        }
    )
    pq.write_table(table, path)


def parse_time_ms(text: str) -> int:
    """ISO date or date-time (UTC unless it says otherwise), or ms since the epoch."""
    if text.lstrip("-").isdigit() and len(text) > 8:
        return int(text)
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)
