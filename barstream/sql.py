"""``barstream sql``: SQL over the stores with DuckDB, reading them in place.

In a query, ``bars('SYMBOL', 'SIDE', 'TIMEFRAME'[, 'START'[, 'END']])`` is a table of one
store's committed records (``barstream.frames``: columns ``time`` timestamp UTC, ``open``,
``high``, ``low``, ``close``, ``volume``, ``flags``, ``provisional``, ``ts_ms``; START/END
bound the bar open times, UTC ISO or ms, END exclusive, found by binary search before any
record is read)::

    barstream sql "SELECT date_trunc('day', time) AS day, max(high) - min(low) AS range
                   FROM bars('EUR-USD', 'BID', '1h', '2026-01-01') GROUP BY day ORDER BY day"

Each distinct ``bars(…)`` call is rewritten to a view name registered with DuckDB as an
Arrow stream source (``frames.Bars``: a new scan each time DuckDB reads it, so a query may
use the same table twice, a self-join included); DuckDB pulls batches of
``--batch-rows`` records from the mmap'd store — no import into a database, memory bounded
by the batch size. The session time zone is UTC (``date_trunc``, ``time_bucket``). The
rewrite (``rewrite``) skips string literals, quoted identifiers and comments.

Output (``write``): ``table`` (DuckDB's box rendering, ``--max-rows``), ``csv`` (a header,
times as ``YYYY-MM-DDTHH:MM:SSZ`` — the format of ``barstream export``), ``json`` (JSON
Lines: one object per row, times as in CSV), ``parquet`` (needs ``--output``). Exit codes:
0 ok; 1 the query failed (DuckDB's message, with the query) or a store is missing; 2 a bad
argument, a malformed ``bars()`` call, or a symbol/side/timeframe that does not exist.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from barstream import configs
from barstream.shared.errors import EXIT_OK, ConfigError, QueryError
from barstream.store_scan import BAR_SERVICES, BATCH_ROWS

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

FORMATS: Final = ("table", "csv", "json", "parquet")
BARS_USAGE: Final = "bars('SYMBOL', 'SIDE', 'TIMEFRAME'[, 'START'[, 'END']])"
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_STRING = re.compile(r"'(?:[^']|'')*'")
_SKIP = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|--[^\n]*|/\*.*?(?:\*/|\Z)", re.S)


@dataclass(frozen=True)
class BarsCall:
    """One ``bars(…)`` table of a query: its arguments and the view name it becomes."""

    symbol: str
    side: str
    timeframe: str
    start: str | None = None
    end: str | None = None

    @property
    def view(self) -> str:
        """A quoted DuckDB identifier naming the call (shows in DuckDB's messages)."""
        args = ", ".join(
            a for a in (self.symbol, self.side, self.timeframe, self.start, self.end) if a
        )
        return '"bars(' + args.replace('"', '""') + ')"'


def rewrite(query: str) -> tuple[str, list[BarsCall]]:
    """``query`` with every ``bars(…)`` call replaced by its view name, and the distinct
    calls. A malformed call raises ``ConfigError`` (key ``bars()``)."""
    out: list[str] = []
    calls: list[BarsCall] = []
    i = 0
    while i < len(query):
        skip = _SKIP.match(query, i)
        if skip and skip.end() > i:
            out.append(skip.group())
            i = skip.end()
            continue
        word = _WORD.match(query, i)
        if word is None:
            out.append(query[i])
            i += 1
            continue
        after = _skip_space(query, word.end())
        qualified = bool(out) and out[-1].rstrip().endswith(".")
        if word.group().lower() != "bars" or qualified or query[after : after + 1] != "(":
            out.append(word.group())
            i = word.end()
            continue
        call, i = _parse_call(query, after + 1)
        if call not in calls:
            calls.append(call)
        out.append(call.view)
    return "".join(out), calls


def connect(calls: list[BarsCall], **locate: Any) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (time zone UTC) with each call's source registered under its view
    name; ``locate``: ``config``, ``data_dir``, ``store``, ``batch_rows`` (``frames.bars``).
    Unknown names and missing stores raise here, before the query runs."""
    import duckdb

    from barstream import frames

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for call in calls:
        try:
            frames.time_ms(call.start), frames.time_ms(call.end)
        except ValueError as e:
            raise _usage("bars() start/end", call.start or call.end, str(e)) from None
        source = frames.bars(
            call.symbol, call.side, call.timeframe, start=call.start, end=call.end, **locate
        )
        con.register(call.view.strip('"').replace('""', '"'), source)
    return con


def run(query: str, *, batch_rows: int = BATCH_ROWS, **locate: Any) -> pa.RecordBatchReader | None:
    """Run ``query``; its result as an Arrow stream (None for a statement without one). A
    query DuckDB refuses raises ``QueryError`` (as does a failure while reading it)."""
    import duckdb

    text, calls = rewrite(query)
    con = connect(calls, batch_rows=batch_rows, **locate)
    try:
        rel = con.sql(text)
        if rel is None:
            return None
        return _Guarded(query, con, rel.to_arrow_reader(batch_rows)).reader()
    except duckdb.Error as e:
        raise QueryError(query, str(e)) from None


class _Guarded:
    """A DuckDB result stream whose errors (raised while it is read) become ``QueryError``."""

    def __init__(
        self, query: str, con: duckdb.DuckDBPyConnection, reader: pa.RecordBatchReader
    ) -> None:
        self.query = query
        self.con = con  # the result's connection lives as long as its stream
        self.inner = reader

    def reader(self) -> pa.RecordBatchReader:
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.inner.schema, self._batches())

    def _batches(self) -> Iterator[pa.RecordBatch]:
        import duckdb
        import pyarrow as pa

        try:
            yield from self.inner
        except (duckdb.Error, pa.ArrowException) as e:
            raise QueryError(self.query, str(e)) from None


def write(
    result: pa.RecordBatchReader, fmt: str, out: IO[bytes] | Path, *, max_rows: int = 40
) -> int:
    """Write ``result`` as ``fmt`` (module docstring) to a binary stream or a file; returns
    the rows written. Streams batch by batch (``table`` keeps only the rows it shows)."""
    import pyarrow.parquet as pq

    if fmt == "parquet":
        rows = 0
        with pq.ParquetWriter(out, result.schema) as writer:
            for batch in result:
                writer.write_batch(batch)
                rows += batch.num_rows
        return rows
    sink = out.open("wb") if isinstance(out, Path) else out
    try:
        if fmt == "table":
            return _write_table(result, sink, max_rows)
        if fmt == "csv":
            return _write_csv(result, sink)
        if fmt == "json":
            return _write_json(result, sink)
        raise ValueError(f"unknown format {fmt!r}; formats are {list(FORMATS)}")
    finally:
        if isinstance(out, Path):
            sink.close()


def _write_csv(result: pa.RecordBatchReader, sink: IO[bytes]) -> int:
    import pyarrow as pa

    rows = 0
    header = True
    for batch in result:
        _write_csv_batch(_iso_times(batch), sink, header=header)
        rows += batch.num_rows
        header = False
    if header:  # no rows: the header alone
        empty = pa.RecordBatch.from_pylist([], schema=result.schema)
        _write_csv_batch(_iso_times(empty), sink, header=True)
    return rows


def _write_csv_batch(batch: pa.RecordBatch, sink: IO[bytes], *, header: bool) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    quoting = _quoting(batch)
    if header and quoting == "none":  # Arrow quotes every column name: bare ones by hand
        sink.write((",".join(batch.schema.names) + "\n").encode())
        header = False
    options = pcsv.WriteOptions(include_header=header, quoting_style=quoting)
    pcsv.write_csv(pa.Table.from_batches([batch]), sink, options)


def _quoting(batch: pa.RecordBatch) -> str:
    """Quote the CSV only where a value (or a column name) holds a comma, quote or line
    break: times and symbols stay bare, as in ``barstream export``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    special = re.compile(r'[,"\r\n]')
    if any(special.search(name) for name in batch.schema.names):
        return "needed"
    for col in batch.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            if pc.any(pc.match_substring_regex(col, r'[,"\r\n]')).as_py():
                return "needed"
        elif not (
            pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)
            or pa.types.is_timestamp(col.type)
            or pa.types.is_date(col.type)
        ):
            return "needed"
    return "none"


def _write_json(result: pa.RecordBatchReader, sink: IO[bytes]) -> int:
    rows = 0
    for batch in result:
        for row in _iso_times(batch).to_pylist():
            sink.write((json.dumps(row, default=str) + "\n").encode())
        rows += batch.num_rows
    return rows


def _write_table(result: pa.RecordBatchReader, sink: IO[bytes], max_rows: int) -> int:
    """DuckDB's box rendering of the first ``max_rows`` rows, then the row count."""
    import duckdb
    import pyarrow as pa

    keep = max(max_rows, 1)
    head: list[pa.RecordBatch] = []
    rows = 0
    for batch in result:
        if rows < keep:
            head.append(batch.slice(0, keep - rows))
        rows += batch.num_rows
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("result", pa.Table.from_batches(head, result.schema))
    text = con.sql("SELECT * FROM result").preview(keep).rstrip()
    more = f" ({keep} shown; --max-rows N shows more)" if rows > keep else ""
    footer = f"{rows} rows{more}\n" if rows else ""  # an empty box says "0 rows" itself
    sink.write(f"{text}\n{footer}".encode())
    return rows


# -- the command -------------------------------------------------------------------------


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``barstream sql`` on the CLI's subparsers (mounted by ``barstream.cli``)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "sql",
        help="SQL (DuckDB) over the stores: FROM bars('EUR-USD','BID','1h')",
        description="Run a DuckDB SQL query in which bars('SYMBOL', 'SIDE', 'TIMEFRAME'[, "
        "'START'[, 'END']]) is the table of one store's committed records, read in place from "
        "the mmap'd store file (no database import, memory bounded by --batch-rows). Columns: "
        "time (timestamp UTC, bar open), open, high, low, close, volume, flags, provisional "
        "(bool), ts_ms (UTC ms). START/END: bar open times, UTC ISO date/time or ms, END "
        "exclusive. The session time zone is UTC. Output: table, csv (times "
        "YYYY-MM-DDTHH:MM:SSZ), json (one object per line), parquet (needs --output). Exit 1 "
        "when the query fails or a store is missing, 2 for a bad argument or an unknown "
        "symbol/side/timeframe.",
        epilog="""example: barstream sql -c config/demo.toml "SELECT time_bucket(INTERVAL 1 DAY, """
        """time) AS day, first(open ORDER BY time) AS open, max(high) AS high FROM """
        """bars('EUR-USD','BID','1h') GROUP BY day ORDER BY day\"""",
    )
    p.add_argument("query", help="the SQL text; - reads it from stdin")
    p.add_argument("--format", "-f", choices=FORMATS, default="table")
    p.add_argument("--output", "-o", type=Path, help="file to write (default stdout)")
    p.add_argument("--max-rows", type=int, default=40, metavar="N", help="table: rows shown")
    p.add_argument(
        "--store",
        choices=BAR_SERVICES,
        default="gateway",
        help="whose stores to read (default the gateway's)",
    )
    p.add_argument(
        "--batch-rows", type=int, default=BATCH_ROWS, metavar="N", help="records per Arrow batch"
    )
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=configs.LIVE_CONFIG,
        help="pipeline configuration (TOML); default the packaged config/live.toml",
    )
    p.add_argument("--data-dir", type=Path, help="read this data directory instead")
    p.set_defaults(func=cmd_sql)
    return p


def cmd_sql(args: argparse.Namespace) -> int:
    query = sys.stdin.read() if args.query == "-" else args.query
    if args.format == "parquet" and args.output is None:
        raise _usage("--format", "parquet", "parquet output is binary: give --output FILE")
    if args.batch_rows < 1:
        raise _usage("--batch-rows", args.batch_rows, "must be >= 1")
    locate: dict[str, Any] = {"store": args.store}
    if args.data_dir is not None:
        locate["data_dir"] = args.data_dir
    else:
        locate["config"] = configs.load(args.config)
    result = run(query, batch_rows=args.batch_rows, **locate)
    from barstream import lacking  # held streams, gaps in the tables' ranges: on stderr

    lacking.warn_sql(query, data_dir=args.data_dir, config=locate.get("config"))
    if result is None:
        return EXIT_OK
    out: IO[bytes] | Path = args.output or sys.stdout.buffer
    rows = write(result, args.format, out, max_rows=args.max_rows)
    if args.output is not None:
        print(f"sql: wrote {rows} rows to {args.output.resolve()}", file=sys.stderr)
    return EXIT_OK


# -- helpers -----------------------------------------------------------------------------


def _usage(key: str, value: object, message: str) -> ConfigError:
    """A usage error (exit 2) of the command or the query, not of the configuration file."""
    error = ConfigError(key, value, message)
    error.hint = "see barstream sql --help"
    return error


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _parse_call(query: str, i: int) -> tuple[BarsCall, int]:
    """The quoted arguments of a ``bars(`` call whose ``(`` ends before ``i``."""
    args: list[str] = []
    while True:
        i = _skip_space(query, i)
        lit = _STRING.match(query, i)
        if lit is None or len(args) == 5:
            break
        args.append(lit.group()[1:-1].replace("''", "'"))
        i = _skip_space(query, lit.end())
        if query[i : i + 1] == ",":
            i += 1
            continue
        break
    if query[i : i + 1] != ")" or not 3 <= len(args) <= 5:
        bad = query[max(0, query.rfind("bars", 0, i)) : i + 1]
        raise _usage("bars()", bad, f"takes 3 to 5 quoted strings: {BARS_USAGE}")
    start = args[3] if len(args) > 3 and args[3] else None
    end = args[4] if len(args) > 4 and args[4] else None
    return BarsCall(args[0], args[1], args[2], start, end), i + 1


def _iso_times(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Timezone-aware timestamp columns as ``YYYY-MM-DDTHH:MM:SS[.fff]Z`` text (UTC)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = []
    for col, field in zip(batch.columns, batch.schema, strict=True):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            utc = col.cast(pa.timestamp(field.type.unit, tz="UTC"))
            text = pc.strftime(utc, format="%Y-%m-%dT%H:%M:%S")
            col = pc.binary_join_element_wise(
                pc.replace_substring_regex(text, r"\.0+$", ""), "Z", ""
            )
        cols.append(col)
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)
