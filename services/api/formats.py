"""Bars as HTTP bodies: the formats of ``GET /v1/bars`` (pure: records in, bytes out).

Every format is written page by page (``Encoder.page``), so a long range streams: the API
asks the gateway for one page, encodes it and sends it before asking for the next.

- ``json``: ``{"topic": T, "bars": [BAR, …], "count": N}``; ``ndjson``: one BAR per line.
  BAR = ``{"ts_ms", "time", "open", "high", "low", "close", "volume", "flags",
  "provisional"}``; ``time`` is the bar open as ISO 8601 in the requested zone (``Z`` for
  UTC, else its offset, e.g. ``+02:00``).
- ``csv``: the one CSV format of ``barstream export`` (``time,open,…,provisional``), its
  ``time`` in the requested zone.
- ``mt4``: MetaTrader's History Center CSV (``YYYY.MM.DD,HH:MM,O,H,L,C,V``, server time).
- ``arrow``: an Arrow IPC stream (``application/vnd.apache.arrow.stream``), one record batch
  per page; ``parquet``: a Parquet file, one row group per page. Columns: ``ts_ms`` int64,
  ``time`` timestamp[ms, UTC], open … volume float64, ``flags`` uint16.

``features=SET`` (bars joined with a feature set's outputs, ``joined.joined_dtype`` rows):
every format but ``mt4`` (fixed columns; refused 400 by params.py) goes on with one column
per output of the set, named as the output (``rsi_14.value``, ``sma_20``), in the set's
order: json/ndjson BARs get a key per output after ``provisional``, its value a number or
``null`` while the output warms up (NaN); csv gets a column per output after
``provisional``, ``nan`` while warming up (as ``barstream history --features`` writes it,
read back as NaN by Python's ``float``, pandas and polars); arrow/parquet get a float64
column per output after ``flags``, NaN while warming up.

Prices and volumes in the text formats are the shortest text that reads back as the same
float64 (``barstream.export.num``) — volumes too, not rounded to 6 decimals as
``barstream export`` writes them; in json/ndjson they are JSON numbers (msgspec writes the
shortest round-tripping form), so every format decodes back to the records exactly.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
from collections.abc import Callable, Mapping
from typing import Any, Final, cast
from zoneinfo import ZoneInfo

import msgspec
import numpy as np

from barstream import export
from barstream.services.gateway.joined import BAR_FIELDS
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import HOUR_MS

#: format name → media type.
MEDIA_TYPES: Final = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "mt4": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
FORMATS: Final = tuple(MEDIA_TYPES)
#: Accept-header media types (without parameters) → format, for content negotiation.
_BY_MEDIA: Final = {
    "application/json": "json",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "text/csv": "csv",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
}


def negotiate(accept: str) -> str | None:
    """The format an ``Accept`` header asks for first (q-values honoured), json for
    ``*/*`` or no header; None when it names only media types we do not write."""
    if not accept.strip():
        return "json"
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        fmt = "json" if media in ("*/*", "application/*") else _BY_MEDIA.get(media.lower())
        if fmt is not None and q > 0:
            choices.append((-q, i, fmt))
    return min(choices)[2] if choices else None


class Bar(msgspec.Struct):
    ts_ms: int
    time: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    flags: int
    provisional: bool


def zone(name: str) -> ZoneInfo | None:
    """The IANA zone ``name`` (None for UTC); ValueError naming it otherwise."""
    if name.upper() in ("", "UTC", "Z", "ETC/UTC"):
        return None
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError) as e:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"tz={name!r} is not an IANA time zone (e.g. Europe/London)") from e


def time_labels(ts_ms: np.ndarray, tz: ZoneInfo | None) -> list[str]:
    """ISO 8601 labels of UTC ms: ``…Z`` in UTC, else local time with its offset. The
    offset is looked up once per distinct UTC hour (zone changes fall on whole hours or
    half hours; a quarter-hour zone is looked up per bar)."""
    if tz is None:
        return export.utc_labels(ts_ms)
    ts = np.asarray(ts_ms, dtype=np.int64)
    keys = ts // (HOUR_MS // 4)
    uniq, inverse = np.unique(keys, return_inverse=True)
    offsets = np.empty(len(uniq), dtype=np.int64)
    suffix: list[str] = []
    for i, k in enumerate(uniq):
        when = dt.datetime.fromtimestamp(int(k) * 900, dt.UTC).astimezone(tz)
        off = when.utcoffset() or dt.timedelta(0)
        offsets[i] = int(off.total_seconds() * 1000)
        minutes = int(off.total_seconds()) // 60
        sign = "+" if minutes >= 0 else "-"
        suffix.append(f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}")
    inv = inverse.reshape(-1)
    local = (ts + offsets[inv]).astype("datetime64[ms]").astype("datetime64[s]")
    text = np.datetime_as_string(local, unit="s")
    return [f"{t}{suffix[j]}" for t, j in zip(text.tolist(), inv.tolist(), strict=True)]


#: Column names of a BAR (json/ndjson) and a csv row, which feature outputs may not reuse.
BAR_COLUMNS: Final = frozenset(Bar.__struct_fields__) | {"time", "provisional"}


@functools.cache
def feature_bar(outputs: tuple[str, ...]) -> type[Bar]:
    """A BAR with one float field per output (encoded under the output's name, after
    ``provisional``; NaN is written as ``null``)."""
    fields = [(f"f{i}", float) for i in range(len(outputs))]
    rename = {f"f{i}": name for i, name in enumerate(outputs)}
    return cast(type[Bar], msgspec.defstruct("FeatureBar", fields, bases=(Bar,), rename=rename))


def clashes(outputs: tuple[str, ...]) -> list[str]:
    """Outputs named as a bar column (a JSON key or CSV column would repeat)."""
    return [c for c in outputs if c in BAR_COLUMNS]


def bars(
    records: np.ndarray, tz: ZoneInfo | None = None, outputs: tuple[str, ...] = ()
) -> list[Bar]:
    """Records (or joined rows with ``outputs``) as JSON-ready bars."""
    cols = [records[k].tolist() for k in ("ts_ms", "open", "high", "low", "close", "volume")]
    flags = records["flags"].tolist()
    labels = time_labels(records["ts_ms"], tz)
    if outputs:
        make = feature_bar(outputs)
        feats = [records[c].tolist() for c in outputs]
        return [
            make(t, label, o, h, lo, c, v, f, bool(f & FLAG_PROVISIONAL), *x)
            for t, label, o, h, lo, c, v, f, *x in zip(
                *cols[:1], labels, *cols[1:], flags, *feats, strict=True
            )
        ]
    return [
        Bar(t, label, o, h, lo, c, v, f, bool(f & FLAG_PROVISIONAL))
        for t, label, o, h, lo, c, v, f in zip(*cols[:1], labels, *cols[1:], flags, strict=True)
    ]


def empty(outputs: tuple[str, ...] = ()) -> np.ndarray:
    """No bars: records, or joined rows with ``outputs``."""
    if not outputs:
        return np.zeros(0, RECORD_DTYPE)
    fields: list[tuple[str, Any]] = [(f, RECORD_DTYPE.fields[f][0]) for f in BAR_FIELDS]  # type: ignore[index]
    return np.zeros(0, np.dtype(fields + [(c, "<f8") for c in outputs]))


_json = msgspec.json.Encoder()


_PRICES: Final = ("open", "high", "low", "close", "volume")


def _rows(records: np.ndarray, names: tuple[str, ...] = _PRICES) -> list[tuple[str, ...]]:
    """OHLCV (or other float64 columns) as the shortest texts that read back as the same
    float64s (no rounding; NaN as ``nan``)."""
    num = export.num
    cols = [records[k].tolist() for k in names]
    return [tuple(num(x) for x in row) for row in zip(*cols, strict=True)]


#: The first six 8-byte words of a record are ts_ms, open … volume (docs/FORMAT.md); flags
#: is the 2-byte word FLAGS_WORD. ``columns`` reads them in one pass.
_WORDS: Final = ("ts_ms", "open", "high", "low", "close", "volume")
_FIELDS: Final[Mapping[str, Any]] = RECORD_DTYPE.fields or {}
assert [_FIELDS[k][1] for k in _WORDS] == [0, 8, 16, 24, 32, 40]
assert _FIELDS["flags"][1] % 2 == 0 and RECORD_DTYPE.itemsize % 8 == 0
FLAGS_WORD: Final = _FIELDS["flags"][1] // 2
#: Records per block of the transpose (its input and output blocks stay in cache).
_BLOCK: Final = 8192
#: The end-of-stream marker of the Arrow IPC stream format.
_ARROW_EOS: Final = b"\xff\xff\xff\xff\x00\x00\x00\x00"


def columns(records: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ts_ms and OHLCV as one contiguous (6, n) int64 array (prices as their float64 bits)
    and flags as uint16 — by a blocked transpose of the 64-byte records: one pass over them,
    where copying each strided field reads every record again (~5x slower at 500 k)."""
    rec = np.ascontiguousarray(records)
    words = rec.view(np.int64).reshape(-1, RECORD_DTYPE.itemsize // 8)
    out = np.empty((len(_WORDS), len(rec)), dtype=np.int64)
    for i in range(0, len(rec), _BLOCK):
        out[:, i : i + _BLOCK] = words[i : i + _BLOCK, : len(_WORDS)].T
    flags = rec.view(np.uint16).reshape(-1, RECORD_DTYPE.itemsize // 2)[:, FLAGS_WORD].copy()
    return out, flags


def arrow_batch(records: np.ndarray, outputs: tuple[str, ...] = ()) -> Any:
    """Records as a pyarrow RecordBatch (the columns of the module docstring); joined rows
    with ``outputs``: then a float64 column per output."""
    import pyarrow as pa

    names = ["ts_ms", "time", "open", "high", "low", "close", "volume", "flags", *outputs]
    if not outputs:
        words, flags = columns(records)
        ts = pa.array(words[0], pa.int64())
        arrays = [ts, ts.view(pa.timestamp("ms", tz="UTC"))]
        arrays += [pa.array(words[i].view(np.float64), pa.float64()) for i in range(1, 6)]
        arrays.append(pa.array(flags, pa.uint16()))
        return pa.RecordBatch.from_arrays(arrays, names=names)
    # joined rows are not 64-byte records: field by field (NaN stays NaN, not null)
    ts = pa.array(np.ascontiguousarray(records["ts_ms"], dtype=np.int64), pa.int64())
    arrays = [ts, ts.view(pa.timestamp("ms", tz="UTC"))]
    arrays += [
        pa.array(np.ascontiguousarray(records[k], dtype=np.float64), pa.float64()) for k in _PRICES
    ]
    arrays.append(pa.array(np.ascontiguousarray(records["flags"], dtype=np.uint16), pa.uint16()))
    arrays += [
        pa.array(np.ascontiguousarray(records[c], dtype=np.float64), pa.float64()) for c in outputs
    ]
    return pa.RecordBatch.from_arrays(arrays, names=names)


@functools.cache
def _arrow_schema(outputs: tuple[str, ...] = ()) -> bytes:
    """The Arrow IPC schema message of every arrow body (of bars with ``outputs``)."""
    batch = arrow_batch(empty(outputs), outputs)
    return bytes(batch.schema.serialize().to_pybytes())


def arrow_table(records: np.ndarray, outputs: tuple[str, ...] = ()) -> Any:
    """Records as a pyarrow Table (the columns of the module docstring)."""
    import pyarrow as pa

    return pa.Table.from_batches([arrow_batch(records, outputs)])


class Encoder:
    """One response body of format ``fmt``: ``start()``, ``page(records)`` per page, ``end()``
    — each returns the bytes to send next."""

    def __init__(
        self,
        fmt: str,
        topic: str,
        tz: ZoneInfo | None = None,
        week_label: str = "monday",
        outputs: tuple[str, ...] = (),
    ) -> None:
        """``outputs``: pages are joined rows of a feature topic with these outputs."""
        if fmt not in MEDIA_TYPES:
            raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        if outputs and fmt == "mt4":
            raise ValueError("mt4 has fixed columns: no feature outputs")
        if clashes(outputs):
            raise ValueError(f"outputs named as bar columns: {', '.join(clashes(outputs))}")
        self.fmt = fmt
        self.topic = topic
        self.tz = tz
        self.week_label = week_label  # mt4: 1W bars labelled by their Monday or Sunday
        self.outputs = outputs
        self._timeframe = topic.rsplit("/", 1)[-1].split(".", 1)[0]
        self.count = 0
        self._sink = _Sink()
        self._writer: Any = None  # parquet's ParquetWriter
        self._page: Callable[[np.ndarray], bytes | memoryview] = getattr(self, f"_page_{fmt}")

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.fmt]

    def start(self) -> bytes:
        if self.fmt == "json":
            return b'{"topic":' + _json.encode(self.topic) + b',"bars":['
        if self.fmt == "csv":
            return ",".join([export.CSV_HEADER, *self.outputs]).encode() + b"\n"
        if self.fmt == "arrow":  # the schema message: the columns are always the same
            return _arrow_schema(self.outputs)
        return b""

    def page(self, records: np.ndarray) -> bytes | memoryview:
        out = self._page(records) if len(records) else b""
        self.count += len(records)
        return out

    def end(self) -> bytes:
        if self.fmt == "json":
            return b'],"count":' + str(self.count).encode() + b"}"
        if self.fmt == "arrow":
            return _ARROW_EOS
        if self.fmt == "parquet":
            if self._writer is None:  # no page at all: still a valid, empty file
                self._open(arrow_table(empty(self.outputs), self.outputs).schema)
            self._writer.close()
            return self._drain()
        return b""

    # -- formats ------------------------------------------------------------------------

    def _page_json(self, records: np.ndarray) -> bytes:
        body = _json.encode(bars(records, self.tz, self.outputs))[
            1:-1
        ]  # the list's items, no brackets
        return (b"," + body) if self.count else body

    def _page_ndjson(self, records: np.ndarray) -> bytes:
        buf = bytearray()
        for bar in bars(records, self.tz, self.outputs):
            _json.encode_into(bar, buf, -1)
            buf += b"\n"
        return bytes(buf)

    def _page_csv(self, records: np.ndarray) -> bytes:
        provisional = ((records["flags"] & FLAG_PROVISIONAL) != 0).tolist()
        labels = time_labels(records["ts_ms"], self.tz)
        rows = _rows(records)
        if self.outputs:
            feats = _rows(records, self.outputs)
            lines = [
                f"{when},{','.join(row)},{1 if p else 0},{','.join(x)}\n"
                for when, row, p, x in zip(labels, rows, provisional, feats, strict=True)
            ]
        else:
            lines = [
                f"{when},{','.join(row)},{1 if p else 0}\n"
                for when, row, p in zip(labels, rows, provisional, strict=True)
            ]
        return "".join(lines).encode()

    def _page_mt4(self, records: np.ndarray) -> bytes:
        dates, times = export.mt4_labels(records["ts_ms"], self._timeframe, self.week_label)
        lines = [
            f"{d},{t},{','.join(row)}\n"
            for d, t, row in zip(dates, times, _rows(records), strict=True)
        ]
        return "".join(lines).encode()

    def _page_arrow(self, records: np.ndarray) -> memoryview:
        # The IPC stream format is the schema message (start), a message per batch, the
        # end marker: each batch is serialized straight into an Arrow buffer, sent as is.
        return memoryview(arrow_batch(records, self.outputs).serialize())

    def _page_parquet(self, records: np.ndarray) -> bytes:
        table = arrow_table(records, self.outputs)
        if self._writer is None:
            self._open(table.schema)
        self._writer.write_table(table)
        return self._drain()

    def _open(self, schema: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(pa.PythonFile(self._sink, mode="w"), schema)

    def _drain(self) -> bytes:
        return self._sink.take()


class _Sink(io.RawIOBase):
    """A write-only file that hands its bytes out as they come (``take``) and still says
    where it is (``tell``: bytes written in all — Parquet's footer records offsets)."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._chunks.append(data)
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data
