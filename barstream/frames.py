"""DataFrames straight over the stores: Arrow, Polars and pandas views of a store's
committed records, read in place from the mmap'd store file on this host.

    from barstream import frames

    lf = frames.scan("EUR-USD", "BID", "1h", config="config/demo.toml")   # Polars LazyFrame
    lf.filter(pl.col("time").dt.year() == 2026).group_by(...).agg(...).collect()
    df = frames.read_pandas("EUR-USD", "BID", "1m", start="2026-06-01", end="2026-06-02")
    reader = frames.arrow_reader("EUR-USD", "BID", "1d")     # pyarrow.RecordBatchReader

Columns (``COLUMNS``): ``time`` (timestamp[ms, UTC], the bar open), ``open``, ``high``,
``low``, ``close``, ``volume`` (float64), ``flags`` (uint16, docs/FORMAT.md §1.2),
``provisional`` (bool: the bar may still change) and ``ts_ms`` (int64, the same time as
UTC ms). Where the store is and which records a read sees — committed records only, one
committed state, memory bounded by ``batch_rows`` and never by the store — is
``barstream.store_scan``: each Arrow batch is built from one bounded copy of ``batch_rows``
records (a 64-byte record is strided; Arrow columns are contiguous), ``time`` and ``ts_ms``
share one buffer. ``start``/``end`` (UTC ms, an ISO date/time, or a datetime; end
exclusive) bound the read by binary search before any record is copied.

``Bars`` is the re-creatable source behind them: every ``reader()`` (and every Arrow
PyCapsule stream it exports, ``__arrow_c_stream__``) scans the store anew, so one source
can be read any number of times — DuckDB re-reads it for each scan of a query. ``scan``
registers it as a Polars IO source: projection (only the fields the columns need are
gathered), predicates (applied per batch) and row limits are pushed into the read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from barstream.shared.config import Config
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.store_scan import BATCH_ROWS, CommittedScan, locate

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl
    import pyarrow as pa

COLUMNS: Final = (
    "time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "flags",
    "provisional",
    "ts_ms",
)
#: The record fields each column is built from.
_FIELD_OF: Final = {"time": "ts_ms", "provisional": "flags"}

TimeLike = int | str | dt.datetime | dt.date | None


@dataclass(frozen=True)
class Bars:
    """The committed records of one store file as a re-creatable Arrow source."""

    path: Path
    start_ms: int | None = None
    end_ms: int | None = None
    columns: tuple[str, ...] = COLUMNS
    batch_rows: int = BATCH_ROWS

    def __post_init__(self) -> None:
        unknown = [c for c in self.columns if c not in COLUMNS]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; the columns are {list(COLUMNS)}")

    @property
    def schema(self) -> pa.Schema:
        import pyarrow as pa

        types = _arrow_types()
        return pa.schema([(c, types[c]) for c in self.columns])

    def with_columns(self, columns: Sequence[str]) -> Bars:
        return replace(self, columns=tuple(columns))

    def batches(self) -> Iterator[pa.RecordBatch]:
        """One scan of the store (``barstream.store_scan.CommittedScan``) as Arrow batches."""
        import pyarrow as pa

        schema = self.schema
        fields = sorted({_FIELD_OF.get(c, c) for c in self.columns})
        scan = CommittedScan(
            self.path,
            start_ms=self.start_ms,
            end_ms=self.end_ms,
            fields=fields,
            batch_rows=self.batch_rows,
            alloc=_arrow_alloc,
        )
        for cols in scan:
            yield pa.RecordBatch.from_arrays(
                [_column(c, cols) for c in self.columns], schema=schema
            )

    def reader(self) -> pa.RecordBatchReader:
        """A new ``pyarrow.RecordBatchReader`` over one scan (the store opens when the first
        batch is read)."""
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self.batches())

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """The Arrow PyCapsule stream of a new scan (DuckDB and Polars read this)."""
        return self.reader().__arrow_c_stream__(requested_schema)


def bars(
    symbol: str,
    side: str,
    timeframe: str,
    *,
    config: Config | str | Path | None = None,
    data_dir: str | Path | None = None,
    store: str = "gateway",
    start: TimeLike = None,
    end: TimeLike = None,
    columns: Sequence[str] = COLUMNS,
    batch_rows: int = BATCH_ROWS,
) -> Bars:
    """The source for one store (``barstream.store_scan.locate``: the gateway's by default;
    unknown names and missing stores raise here, before any read)."""
    path = locate(symbol, side, timeframe, config=config, data_dir=data_dir, store=store)
    return Bars(path, time_ms(start), time_ms(end), tuple(columns), batch_rows)


def arrow_reader(symbol: str, side: str, timeframe: str, **options: Any) -> pa.RecordBatchReader:
    """A ``pyarrow.RecordBatchReader`` of the store's committed records (options: ``bars``)."""
    return bars(symbol, side, timeframe, **options).reader()


def read_arrow(symbol: str, side: str, timeframe: str, **options: Any) -> pa.Table:
    """Every selected record as one ``pyarrow.Table`` (a copy of the selection)."""
    return bars(symbol, side, timeframe, **options).reader().read_all()


def read_pandas(symbol: str, side: str, timeframe: str, **options: Any) -> pd.DataFrame:
    """The selection as a pandas DataFrame (``time`` is datetime64[ms, UTC]); pandas frames
    are materialised, so bound big reads with ``start``/``end``/``columns``."""
    frame: pd.DataFrame = read_arrow(symbol, side, timeframe, **options).to_pandas()
    return frame


def scan(symbol: str, side: str, timeframe: str, **options: Any) -> pl.LazyFrame:
    """A Polars LazyFrame over the store, read batch by batch when collected (or streamed)
    with projection, predicate and row-limit pushdown (module docstring)."""
    return lazy(bars(symbol, side, timeframe, **options))


def lazy(source: Bars) -> pl.LazyFrame:
    """``source`` registered as a Polars IO source."""
    import polars as pl
    from polars.io.plugins import register_io_source

    def read(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        wanted = list(source.columns) if with_columns is None else with_columns
        need = set(wanted)
        if predicate is not None:
            need |= set(predicate.meta.root_names())
        part = source.with_columns([c for c in source.columns if c in need])
        left = n_rows
        for batch in part.batches():
            if left is not None and left <= 0:
                return
            frame = pl.DataFrame(pl.from_arrow(batch))
            if predicate is not None:
                frame = frame.filter(predicate)
            frame = frame.select(wanted)
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame

    return register_io_source(
        read,
        schema=_polars_schema(source.columns),
        explain_name="barstream",
        explain_detail=str(source.path),
    )


def time_ms(value: TimeLike) -> int | None:
    """UTC ms of ``value``: ms since the epoch, an ISO date or date-time (UTC unless it
    says otherwise), or a date/datetime (naive means UTC)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a time")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, str):
        if value.strip().lstrip("-").isdigit():
            return int(value)
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not a time: give UTC ms or an ISO date/time like 2026-06-01 "
                "or 2026-06-01T12:00"
            ) from None
        return time_ms(when)
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return int(value.timestamp() * 1000)


def _column(name: str, cols: dict[str, np.ndarray]) -> pa.Array:
    import pyarrow as pa

    if name in ("time", "ts_ms"):
        ts = cols["ts_ms"]
        kind = pa.timestamp("ms", tz="UTC") if name == "time" else pa.int64()
        return pa.Array.from_buffers(kind, len(ts), [None, pa.py_buffer(ts)])
    if name == "provisional":
        return pa.array((cols["flags"] & FLAG_PROVISIONAL) != 0)
    return pa.array(cols[name])


def _arrow_alloc(n: int, dtype: np.dtype) -> np.ndarray:
    """An array in memory of Arrow's pool, which the batch's Arrow column then owns (the pool
    reuses freed memory: no fresh pages to fault in per batch)."""
    import pyarrow as pa

    return np.frombuffer(pa.allocate_buffer(n * dtype.itemsize), dtype)


def _arrow_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {
        "time": pa.timestamp("ms", tz="UTC"),
        **{c: pa.float64() for c in ("open", "high", "low", "close", "volume")},
        "flags": pa.uint16(),
        "provisional": pa.bool_(),
        "ts_ms": pa.int64(),
    }


def _polars_schema(columns: Sequence[str]) -> dict[str, Any]:
    import polars as pl

    types: dict[str, Any] = {
        "time": pl.Datetime("ms", "UTC"),
        **{c: pl.Float64 for c in ("open", "high", "low", "close", "volume")},
        "flags": pl.UInt16,
        "provisional": pl.Boolean,
        "ts_ms": pl.Int64,
    }
    return {c: types[c] for c in columns}
