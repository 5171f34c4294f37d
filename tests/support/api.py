"""Helpers of the HTTP API tests: decoding every ``/v1/bars`` format back to columns, an
SSE reader over httpx (events, the ``series[start_offset:] = bars`` reconstruction, a
background watcher), and raw-socket requests for what httpx will not send.

Columns are a dict of numpy arrays: ``ts_ms`` int64, ``open`` … ``volume`` float64,
``provisional`` bool, and ``flags`` uint16 where the format carries them (json, ndjson,
arrow, parquet; the text formats carry only the provisional bit)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import msgspec
import numpy as np

from barstream.shared.record import FLAG_PROVISIONAL

PRICES = ("open", "high", "low", "close", "volume")
NEW_YORK = ZoneInfo("America/New_York")

Columns = dict[str, np.ndarray]


def columns_of(records: np.ndarray) -> Columns:
    """The gateway's records as the columns every decoder returns."""
    out: Columns = {"ts_ms": np.asarray(records["ts_ms"], dtype=np.int64)}
    for k in PRICES:
        out[k] = np.asarray(records[k], dtype=np.float64)
    out["flags"] = np.asarray(records["flags"], dtype=np.uint16)
    out["provisional"] = (out["flags"] & FLAG_PROVISIONAL) != 0
    return out


def _from_bars(bars: list[dict[str, Any]]) -> Columns:
    out: Columns = {"ts_ms": np.array([b["ts_ms"] for b in bars], dtype=np.int64)}
    for k in PRICES:
        out[k] = np.array([b[k] for b in bars], dtype=np.float64)
    out["flags"] = np.array([b["flags"] for b in bars], dtype=np.uint16)
    out["provisional"] = np.array([b["provisional"] for b in bars], dtype=bool)
    out["time"] = np.array([b["time"] for b in bars], dtype=object)
    return out


def label(ts_ms: int, tz: str | None) -> str:
    """The ISO label the API promises for a bar open (``Z`` in UTC, else the offset)."""
    zone = dt.UTC if tz is None else ZoneInfo(tz)
    text = dt.datetime.fromtimestamp(ts_ms / 1000, zone).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z") if tz is None else text


def mt4_label(ts_ms: int) -> str:
    """MT4 server time (New York + 7 h) as ``YYYY.MM.DD,HH:MM``."""
    ny = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).astimezone(NEW_YORK)
    server = ny.replace(tzinfo=None) + dt.timedelta(hours=7)
    return server.strftime("%Y.%m.%d,%H:%M")


def decode(fmt: str, body: bytes) -> Columns:
    """A ``/v1/bars`` body of format ``fmt`` as columns (``time`` labels where the format
    has them; ``mt4`` gives ``label`` instead of ``ts_ms``)."""
    if fmt == "json":
        doc = msgspec.json.decode(body)
        cols = _from_bars(doc["bars"])
        assert doc["count"] == len(doc["bars"]), doc["count"]
        cols["topic"] = np.array([doc["topic"]], dtype=object)
        return cols
    if fmt == "ndjson":
        lines = body.decode().splitlines()
        assert all(lines), "ndjson: an empty line"
        return _from_bars([msgspec.json.decode(line) for line in lines])
    if fmt in ("arrow", "parquet"):
        import pyarrow as pa
        import pyarrow.ipc
        import pyarrow.parquet as pq

        if fmt == "arrow":
            table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
        else:
            table = pq.read_table(pa.BufferReader(body))
        expect = {
            "ts_ms": pa.int64(),
            "time": pa.timestamp("ms", tz="UTC"),
            **dict.fromkeys(PRICES, pa.float64()),
            "flags": pa.uint16(),
        }
        assert {f.name: f.type for f in table.schema} == expect, table.schema
        out: Columns = {k: table[k].to_numpy() for k in ("ts_ms", *PRICES, "flags")}
        assert np.array_equal(table["time"].cast(pa.int64()).to_numpy(), out["ts_ms"])
        out["provisional"] = (out["flags"] & FLAG_PROVISIONAL) != 0
        return out
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0] == ["time", "open", "high", "low", "close", "volume", "provisional"]
        rows = rows[1:]
        times = [r[0] for r in rows]
        out = {
            "ts_ms": np.array(
                [int(dt.datetime.fromisoformat(t).timestamp() * 1000) for t in times],
                dtype=np.int64,
            ),
            "time": np.array(times, dtype=object),
        }
        for i, k in enumerate(PRICES, start=1):
            out[k] = np.array([float(r[i]) for r in rows], dtype=np.float64)
        assert all(r[6] in ("0", "1") for r in rows)
        out["provisional"] = np.array([r[6] == "1" for r in rows], dtype=bool)
        return out
    if fmt == "mt4":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert all(len(r) == 7 for r in rows), rows[:3]
        out = {"label": np.array([f"{r[0]},{r[1]}" for r in rows], dtype=object)}
        for i, k in enumerate(PRICES, start=2):
            out[k] = np.array([float(r[i]) for r in rows], dtype=np.float64)
        return out
    raise ValueError(fmt)


def assert_same(got: Columns, want: Columns, what: str, tz: str | None = None) -> None:
    """``got`` (a decoded body) holds exactly ``want`` (the gateway's records): ts_ms (or
    MT4 labels), OHLCV bit for bit, flags where carried, the provisional bit, labels."""
    n = len(want["ts_ms"])
    if "label" in got:  # mt4
        assert list(got["label"]) == [mt4_label(int(t)) for t in want["ts_ms"]], what
    else:
        assert len(got["ts_ms"]) == n, f"{what}: {len(got['ts_ms'])} bars, gateway {n}"
        assert np.array_equal(got["ts_ms"], want["ts_ms"]), what
    for k in PRICES:
        # exact: the same float64 bits (no tolerance)
        assert np.array_equal(got[k].view(np.int64), want[k].view(np.int64)), f"{what}: {k}"
    if "flags" in got:
        assert np.array_equal(got["flags"], want["flags"]), f"{what}: flags"
    if "provisional" in got:
        assert np.array_equal(got["provisional"], want["provisional"]), f"{what}: provisional"
    if "time" in got:
        labels = [label(int(t), tz) for t in want["ts_ms"]]
        assert list(got["time"]) == labels, f"{what}: time labels"


# -- Server-Sent Events --------------------------------------------------------------------


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]
    at: float  # time.monotonic() when it was read

    @property
    def end(self) -> int:
        return int(self.id.rsplit(".", 1)[1])


def read_events(lines: Any) -> Any:
    """Events of an SSE line iterator, and None for each comment (keep-alive) — so a reader
    can check its deadline while a stream is idle. ``retry:`` fields are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                yield Event(
                    fields.get("id", ""),
                    fields.get("event", "message"),
                    msgspec.json.decode(fields["data"]),
                    time.monotonic(),
                )
            fields = {}
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


def read_stream(
    client: httpx.Client,
    url: str,
    series: Series,
    n: int,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> list[Event]:
    """Open ``url``, apply its events to ``series`` until ``n`` came, close; bounded."""
    deadline = time.monotonic() + timeout_s
    out: list[Event] = []
    with client.stream("GET", url, headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        for ev in read_events(r.iter_lines()):
            assert time.monotonic() < deadline, f"{url}: {len(out)} of {n} events in {timeout_s}s"
            if ev is None:
                continue
            series.apply(ev)
            out.append(ev)
            if len(out) >= n:
                break
    return out


@dataclass
class Series:
    """A consumer's copy: ``series[start_offset:] = bars`` per event, with the checks that
    make "every bar once": no event starts past the end (gap), ``replaces`` is exactly the
    bars it overwrites (no duplicate), the id's END is the new end, one topic, in order."""

    base: int | None = None
    bars: list[dict[str, Any]] = field(default_factory=list)
    seq: int = -1

    @property
    def end(self) -> int:
        return (self.base or 0) + len(self.bars)

    def apply(self, ev: Event) -> None:
        d = ev.data
        assert ev.event == "bars", ev
        assert d["kind"] in ("history", "update", "resync"), d["kind"]
        start = d["start_offset"]
        if self.base is None:
            self.base = start
        assert self.base <= start <= self.end, f"gap: event at {start}, series {self.base}…"
        assert d["replaces"] == self.end - start, (d["replaces"], self.end, start)
        assert d["seq"] >= self.seq, f"seq went back: {d['seq']} after {self.seq}"
        self.seq = d["seq"]
        del self.bars[start - self.base :]
        self.bars.extend(d["bars"])
        assert ev.end == self.end, f"id {ev.id}: END is not the series end {self.end}"
        ts = [b["ts_ms"] for b in self.bars[max(0, start - self.base - 1) :]]
        assert all(a < b for a, b in itertools.pairwise(ts)), "bars out of order"

    def closed(self) -> list[dict[str, Any]]:
        return [b for b in self.bars if not b["provisional"]]


def assert_series_matches(
    bars: list[dict[str, Any]], gateway_records: np.ndarray, what: str
) -> None:
    """A consumer's copy (``bars``) equals the gateway's series from the copy's first bar
    on: every bar exactly (OHLCV bits, flags), but a provisional last bar, which may have
    changed since, only by its open time."""
    assert bars, f"{what}: no bars"
    want = columns_of(gateway_records)
    n = len(bars)
    assert len(want["ts_ms"]) >= n, f"{what}: {n} bars streamed, gateway has {len(want['ts_ms'])}"
    got = _from_bars(bars)
    provisional_tail = bool(got["provisional"][-1])
    m = n - 1 if provisional_tail else n  # a provisional last bar may have changed since
    assert not got["provisional"][:-1].any(), f"{what}: provisional bar before the last"
    assert np.array_equal(got["ts_ms"], want["ts_ms"][:n]), f"{what}: ts_ms"
    for k in (*PRICES, "flags"):
        assert np.array_equal(got[k][:m], want[k][:m]), f"{what}: {k}"


class Watcher:
    """A live SSE stream read in a thread for the whole test module: its events, their
    times, the consumer's copy, and an error if the stream failed or ended."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list[Event] = []
        self.series = Series()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        timeout = httpx.Timeout(10.0, read=15.0)
        try:
            with (
                httpx.Client(timeout=timeout) as client,
                client.stream("GET", self.url) as r,
            ):
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("text/event-stream")
                for ev in read_events(r.iter_lines()):
                    if self._stop.is_set():
                        return
                    if ev is not None:
                        with self._lock:
                            self.series.apply(ev)
                            self.events.append(ev)
                raise AssertionError("the SSE stream ended")
        except BaseException as e:  # reported by check()
            if not self._stop.is_set():
                self.error = e

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the live stream failed: {self.error!r}") from self.error

    def count(self) -> int:
        self.check()
        return len(self.events)

    def bars(self) -> list[dict[str, Any]]:
        """A copy of the consumer's series (consistent: taken between two events)."""
        with self._lock:
            return list(self.series.bars)

    def wait_more(self, n: int, timeout_s: float, what: str) -> None:
        """Wait (bounded) for ``n`` more events than now."""
        target = self.count() + n
        deadline = time.monotonic() + timeout_s
        while self.count() < target:
            assert time.monotonic() < deadline, f"live stream: not {n} new events {what}"
            time.sleep(0.05)

    def max_gap(self, t0: float, t1: float) -> float:
        """Longest wait between events (or the window's ends) within [t0, t1]."""
        times = [t0, *(e.at for e in self.events if t0 <= e.at <= t1), t1]
        return max(b - a for a, b in itertools.pairwise(times))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)


# -- raw sockets ---------------------------------------------------------------------------


def raw(port: int, request: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as is; the status and the body of the answer (read to close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def closed_within(sock: socket.socket, timeout_s: float) -> float | None:
    """Seconds until the server closes ``sock`` (reading and dropping what it sends),
    None when it is still open after ``timeout_s``."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - t0
        if not data:
            return time.monotonic() - t0
    return None
