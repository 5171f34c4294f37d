"""``barstream export``: a resampler store as CSV, MT4 CSV or Parquet (read-only); and the
one CSV writer ``barstream history`` uses too.

Reads ``data_dir/resampler/SYMBOL/SIDE/TIMEFRAME.bars`` (the resampler also keeps the 1m
series) with ``Store.open(writable=False)`` + ``snapshot()``: a consistent copy even while the
resampler writes. Provisional (still open) bars are left out unless asked for.

Formats (prices are the shortest text that reads back as the same float64, ``X.0`` → ``X``;
volumes are rounded to 6 decimals first, since a bar's volume is a float sum):

- ``csv`` (:func:`write_csv`, also ``barstream history``): header
  ``time,open,high,low,close,volume,provisional``; ``time`` = bar open, UTC, ISO 8601
  ``YYYY-MM-DDTHH:MM:SSZ``; ``provisional`` ``1`` for a bar that may still change (the
  open bar), else ``0``.
- ``mt4``: no header, ``YYYY.MM.DD,HH:MM,O,H,L,C,V`` with the bar open in MT4 server time
  (America/New_York + 7 h: GMT+2, GMT+3 while New York observes DST) — what MetaTrader's
  History Center imports. The label is the bar's open in server time, except for calendar
  bars, labelled as MetaTrader does: ``1M`` the 1st of the month and ``1Y`` 1 January at 00:00
  (an MT4 month whose 1st is a Saturday or Sunday opens on its first trading day), ``1W`` its
  Monday or, with ``week_label="sunday"``, the Sunday before (MetaTrader's W1). It is a true MT4 bar
  only if the bar starts on MT4's grid: always for an ``mt4``-aligned store, and for a
  ``utc``-aligned one only for timeframes that divide an hour (1m … 1h: server time is UTC
  + 2 or 3 whole hours). :func:`mt4_mismatch` names the others (4h, 1d, 1W …: a utc day
  opens at 02:00 or 03:00 server time).
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
from barstream.shared.errors import ConfigError
from barstream.shared.header import StoreMeta
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.store import Store
from barstream.shared.timeframe import HOUR_MS, Timeframe

NEW_YORK: Final = ZoneInfo("America/New_York")
MT4_SHIFT_MS: Final = MT4.clock_shift_ms  # server time = New York + 7 h
FORMATS: Final = ("csv", "mt4", "parquet")
CSV_HEADER: Final = "time,open,high,low,close,volume,provisional"
#: The day a 1W bar is labelled with in MT4 CSV (Monday = 0, as the original; Sunday = 6, as
#: MetaTrader's W1).
WEEK_LABELS: Final = {"monday": 0, "sunday": 6}


def store_path(data_dir: Path, symbol: str, side: str, timeframe: str) -> Path:
    return data_dir / "resampler" / symbol / side / f"{timeframe}.bars"


def store_meta(path: Path) -> StoreMeta:
    """The header facts (symbol, side, timeframe, alignment) of the store at ``path``."""
    with Store.open(path, writable=False) as store:
        return store.meta


def mt4_mismatch(meta: StoreMeta) -> str | None:
    """Why the MT4 labels of this store's bars would not be MT4 bars, or None when they are
    (an ``mt4``-aligned store, or a timeframe that divides an hour)."""
    if meta.alignment == MT4.name:
        return None
    try:
        tf = Timeframe.parse(meta.timeframe)
    except ConfigError:
        return None  # not a bar timeframe; the store holds what it holds
    if tf.interval_ms is not None and tf.is_intraday and HOUR_MS % tf.interval_ms == 0:
        return None
    return (
        f"{meta.key} is {meta.alignment or 'utc'}-aligned: its {tf} bars start on the UTC "
        f"clock, 2 or 3 hours off MT4's server-time {tf} boundaries (a UTC day opens at 02:00 "
        "or 03:00 server time), so MetaTrader would show shifted bars. Only timeframes that "
        "divide an hour (1m … 1h) export right from a utc store. Set resampler.alignment = "
        '"mt4" in the configuration and run `barstream rebuild`, or pass --allow-utc to '
        "export these bars anyway"
    )


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


def mt4_labels(
    ts_ms: np.ndarray, timeframe: str | None = None, week_label: str = "monday"
) -> tuple[list[str], list[str]]:
    """(``YYYY.MM.DD``, ``HH:MM``) MT4 server-time labels of UTC bar-open times.

    Bars of a calendar unit are labelled the way MetaTrader and the original project label
    them, not by their first minute: a ``1M`` bar by the 1st of its month and a ``1Y`` bar by
    1 January, at 00:00 (an MT4 month that begins on a Saturday or a Sunday opens with its
    first trading day, 2019-06-03, but is the bar ``2019.06.01``); a ``1W`` bar by the Monday
    (``week_label="monday"``, as the original) or the Sunday before it (``"sunday"``, as
    MetaTrader's W1) of the server-time week it opens in."""
    if week_label not in WEEK_LABELS:
        raise ConfigError("--week-label", week_label, f"one of {', '.join(WEEK_LABELS)}")
    local = (ts_ms + mt4_offset_ms(ts_ms)).astype("datetime64[ms]").astype("datetime64[m]")
    unit = _calendar_unit(timeframe)
    if unit is not None:
        local = _calendar_label(local, unit, week_label)
    text = np.datetime_as_string(local, unit="m")  # 2026-03-08T17:00
    dates = [t[:10].replace("-", ".") for t in text]
    times = [t[11:16] for t in text]
    return dates, times


def _calendar_unit(timeframe: str | None) -> str | None:
    if timeframe is None:
        return None
    try:
        tf = Timeframe.parse(timeframe)
    except ConfigError:
        return None
    return tf.unit if tf.unit in ("W", "M", "Y") else None


def _calendar_label(local: np.ndarray, unit: str, week_label: str) -> np.ndarray:
    """Midnight of the label day of each server-time bar open (``datetime64[m]``)."""
    if unit == "M":
        days = local.astype("datetime64[M]").astype("datetime64[D]")
    elif unit == "Y":
        days = local.astype("datetime64[Y]").astype("datetime64[D]")
    else:
        day = local.astype("datetime64[D]")
        weekday = (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        target = WEEK_LABELS[week_label]
        days = day - ((weekday - target) % 7).astype("timedelta64[D]")
    out: np.ndarray = days.astype("datetime64[m]")
    return out


def utc_labels(ts_ms: np.ndarray) -> list[str]:
    """``YYYY-MM-DDTHH:MM:SSZ`` of UTC ms."""
    text = np.datetime_as_string(ts_ms.astype("datetime64[ms]").astype("datetime64[s]"), unit="s")
    return [f"{t}Z" for t in text]


def num(x: float) -> str:
    """Shortest text that reads back as the same float64; integral values without ``.0``."""
    text = repr(float(x))
    return text[:-2] if text.endswith(".0") else text


def rows(records: np.ndarray) -> Iterator[tuple[str, str, str, str, str]]:
    cols = [records[k].tolist() for k in ("open", "high", "low", "close", "volume")]
    for o, h, lo, c, v in zip(*cols, strict=True):
        # Prices are exact decimals already; a volume is a float sum of decimal volumes, so
        # it is rounded to 6 decimals (11055.26, not 11055.259999999998).
        yield num(o), num(h), num(lo), num(c), num(round(v, 6))


def csv_lines(records: np.ndarray) -> Iterable[str]:
    """The one CSV format (module docstring): header, then one line per record."""
    yield CSV_HEADER + "\n"
    provisional = ((records["flags"] & FLAG_PROVISIONAL) != 0).tolist()
    for when, row, p in zip(utc_labels(records["ts_ms"]), rows(records), provisional, strict=True):
        yield f"{when},{','.join(row)},{1 if p else 0}\n"


def write_csv(records: np.ndarray, out: TextIO) -> int:
    """Write ``records`` as the one CSV format; returns the number of bars written."""
    write_text(csv_lines(records), out)
    return len(records)


def mt4_lines(
    records: np.ndarray, timeframe: str | None = None, week_label: str = "monday"
) -> Iterable[str]:
    dates, times = mt4_labels(records["ts_ms"], timeframe, week_label)
    for d, t, row in zip(dates, times, rows(records), strict=True):
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
