"""Consumer client of the barstream gateway: history as numpy arrays, live bars with no gap
and no duplicate, across gateway restarts. Sync and asyncio.

Example::

    from barstream.client import GatewayClient, to_pandas

    with GatewayClient("tcp://127.0.0.1:7110", "tcp://127.0.0.1:7111") as gw:
        hist = gw.history("EUR-USD", "1h", start="2025-01-01", end="2025-02-01")
        print(len(hist), to_pandas(hist).tail())
        for item in gw.stream("EUR-USD", "1m", history=500, closed_only=True):
            model.update(item.records)          # each closed bar once, in order
            if item.replaces:                   # a revision of bars already seen
                model.refit_from(item.start_offset)

``AsyncGatewayClient`` has the same methods as coroutines / an async iterator.

What ``stream()`` yields — ``BarUpdate`` items; each says "from ``start_offset`` on, the series
now reads ``records``" (``start_offset`` is an offset in the gateway's store of the topic):

- the first item (``kind == "history"``) holds the last ``history`` bars of the series (the
  provisional bar counts, when there is one);
- then every change, in order: a new bar is an item starting at the previous end; an update
  of the provisional bar is an item starting at that bar's offset with ``replaces == 1`` (it
  supersedes one bar the consumer already received); a revision of history starts lower,
  with ``replaces`` the number of bars superseded (the upstream flags them FLAG_REVISED).
  Applying items in order (``series[start_offset:] = records``) reproduces the gateway's
  series exactly. An item never repeats what the consumer already holds: a change that
  leaves the series as it was yields nothing;
- ``closed_only=True``: records are closed bars only (no FLAG_PROVISIONAL); each bar is
  yielded once, when it closes (``replaces == 0``), unless history is revised later: then an
  item with ``replaces > 0`` carries the corrected closed bars from the first changed one.

Gaps are healed inside: every update carries its topic's sequence number; a jump (messages
dropped at the gateway's send high-water mark because this consumer was slow), a heartbeat
announcing a newer sequence, or silence (no heartbeat for HEARTBEAT_TIMEOUT_S: the gateway
died or stalled; reconnect) makes the client ask for what changed since the last sequence it
applied and continue — ``resyncs`` / ``reconnects`` count these. Every receive has a timeout;
sockets close with linger 0.

Layout: the per-topic state machine is ``follower.py`` (no I/O), the sockets of a stream
``driver.py``; this module is the two facades over them — their shared part (``_Base``:
requests, history pages, the stream's steps) written once, each facade only saying how it
waits (``zmq.Poller`` or the event loop) — and ``to_pandas`` / ``to_polars``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import numpy as np
import zmq

from barstream.services.features.layout import Described
from barstream.services.features.layout import stride as layout_stride
from barstream.services.gateway.driver import REQUEST_TIMEOUT_S, Driver
from barstream.services.gateway.follower import KEEP_RECORDS, BarUpdate, Follower, Position
from barstream.services.gateway.frames import Answer, Call, HistoryPages, expect
from barstream.services.gateway.joined import Joiner, described, joined, whole_bars
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import GatewayError
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.sockets import wait_readable

if TYPE_CHECKING:
    from typing import Self

    from barstream.shared.config import Config

DEFAULT_PUBLISH: Final = "tcp://127.0.0.1:7110"
DEFAULT_REQUESTS: Final = "tcp://127.0.0.1:7111"

#: What ``stream`` returns: an iterator (GatewayClient) or an async iterator (AsyncGatewayClient).
_Stream = TypeVar("_Stream", Iterator[BarUpdate], AsyncIterator[BarUpdate])
#: One step of a stream: items to hand on, or the sockets to wait on and for how long.
_Step = list[BarUpdate] | tuple[list[zmq.Socket[bytes]], float]


class _Base(Generic[_Stream]):
    """What both facades share: endpoints, counters, the request socket, streams' steps."""

    def __init__(
        self,
        publish: str = DEFAULT_PUBLISH,
        requests: str = DEFAULT_REQUESTS,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        rcvhwm: int = gp.PUBLISH_HWM,
        keep_records: int = KEEP_RECORDS,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        """``context``: a zmq context to share (several clients in one process: one I/O
        thread); the client then leaves it open on ``close``."""
        self.publish = publish
        self.requests = requests
        self.timeout_s = timeout_s
        self.rcvhwm = rcvhwm
        self.keep_records = keep_records
        self._own_ctx = context is None
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context() if context is None else context
        self._req: zmq.Socket[bytes] | None = None
        self._next_id = 1
        self.drivers: list[Driver] = []
        self._ended = [0, 0, 0]  # resyncs, gaps, reconnects of finished streams

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Self:
        """A client for the gateway a pipeline configuration describes."""
        from barstream.shared.config import connect_address

        return cls(
            connect_address(config.gateway.publish),
            connect_address(config.gateway.requests),
            **kwargs,
        )

    @property
    def resyncs(self) -> int:
        """Snapshot requests that healed a gap or a reconnect (streams ended included)."""
        return self._ended[0] + sum(d.resyncs for d in self.drivers)

    @property
    def gaps(self) -> int:
        """Sequence gaps seen (messages dropped for this consumer)."""
        return self._ended[1] + sum(d.gaps for d in self.drivers)

    @property
    def reconnects(self) -> int:
        return self._ended[2] + sum(d.reconnects for d in self.drivers)

    def close(self) -> None:
        self._drop_socket()
        for d in self.drivers:
            d.close()
        if self._own_ctx:
            self.ctx.destroy(linger=0)

    def stream(
        self,
        symbol: str,
        timeframe: str,
        side: str = "BID",
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
        resume: Position | None = None,
        features: str | None = None,
    ) -> _Stream:
        """The last ``history`` bars, then every change, gap-free (see the module doc).
        ``timeout_s``: raise TimeoutError when no item comes for that long (None: wait).
        ``resume``: the ``position`` of the last item a consumer applied (saved across its
        restart): continue from there with no gap and no duplicate instead of a history
        item (a store rebuilt since gives a "reset" item of the last ``history`` bars).
        ``features``: a configured feature set's name — items are ``FeatureBarUpdate``s
        whose records are the bars joined with the set's outputs (``joined.joined_dtype``),
        each bar with its own features, under the same guarantees."""
        topic = (
            gp.topic_of(symbol, side, timeframe)
            if features is None
            else feature_topic(symbol, side, timeframe, features)
        )
        return self.stream_topics(
            [topic],
            history,
            closed_only,
            timeout_s=timeout_s,
            resume=None if resume is None else {topic: resume},
            features=features is not None,
        )

    def stream_topics(
        self,
        topics: Iterable[str],
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
        resume: Mapping[str, Position] | None = None,
        features: bool = False,
    ) -> _Stream:
        """``stream`` over several topics on one connection (items carry ``topic``);
        ``resume``: topic → position to continue from (see ``stream``); ``features``: the
        topics are feature topics (``SYMBOL/SIDE/TF.SET``), items joined rows."""
        raise NotImplementedError

    # -- internals ----------------------------------------------------------------------

    def _steps(
        self,
        topics: Iterable[str],
        history: int,
        closed_only: bool,
        timeout_s: float | None,
        resume: Mapping[str, Position] | None = None,
        joiners: dict[str, Joiner] | None = None,
    ) -> Generator[_Step, None, None]:
        """A stream as steps either facade carries out: items to hand on, or the sockets
        to wait on (and for how long) before the next step. ``joiners``: feature topics'
        items become joined rows (the follower asks for one bar more than ``history``:
        the first may come cut)."""
        followers = [
            Follower(
                t,
                (history + 1) * joiners[t].stride if joiners and history else history,
                closed_only,
                keep=self.keep_records,
            )
            for t in topics
        ]
        if not followers:
            raise ValueError("stream of no topic")
        for f in followers:
            if resume and f.topic in resume:
                f.resume(resume[f.topic])
        driver = Driver(self.ctx, self.publish, self.requests, followers, rcvhwm=self.rcvhwm)
        self.drivers.append(driver)
        try:
            last_item = time.monotonic()
            while True:
                items = driver.pump()
                if joiners:
                    items = [
                        j for item in items for j in joiners[item.topic].on_item(item, history)
                    ]
                if items:
                    yield items
                    last_item = time.monotonic()
                    continue
                if timeout_s is not None and time.monotonic() - last_item > timeout_s:
                    raise TimeoutError(f"no bar update for {timeout_s}s from {self.publish}")
                wait = driver.timeout_s()
                if timeout_s is not None:
                    wait = min(wait, max(0.0, last_item + timeout_s - time.monotonic()))
                yield driver.sockets(), min(wait, 1.0)
        finally:
            driver.close()
            self.drivers.remove(driver)
            counts = (driver.resyncs, driver.gaps, driver.reconnects)
            self._ended = [a + b for a, b in zip(self._ended, counts, strict=True)]

    def _joiners(
        self,
        topics: list[str],
        listing: Callable[[str], list[gp.TopicInfo]],
        resume: Mapping[str, Position] | None,
    ) -> dict[str, Joiner]:
        out = {}
        for t in topics:
            out[t] = Joiner(t, schema_of(t, listing(t)), self.keep_records)
            if resume and t in resume:
                out[t].resume(resume[t])
        return out

    def _socket(self) -> zmq.Socket[bytes]:
        if self._req is None:
            sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.requests)
            self._req = sock
        return self._req

    def _drop_socket(self) -> None:
        if self._req is not None:
            self._req.close(linger=0)
            self._req = None

    def _call(self, req: gp.Request) -> Call:
        req.id = self._next_id
        self._next_id += 1
        return Call(
            self._socket(),
            req,
            timeout_s=self.timeout_s,
            endpoint=self.requests,
            on_timeout=self._drop_socket,
        )


class GatewayClient(_Base[Iterator[BarUpdate]]):
    """Blocking client (see the module docstring). Not thread-safe: one per thread."""

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, req: gp.Request) -> Answer:
        """Send one request, wait (``timeout_s``) for its reply. Raises GatewayError on a
        refusal, TimeoutError when the gateway does not answer."""
        call = self._call(req)
        while (answer := call.receive()) is None:
            call.sock.poll(int(call.left_s() * 1000) + 1, zmq.POLLIN)
        return answer

    def history(
        self,
        symbol: str,
        timeframe: str,
        start: int | str | dt.datetime | dt.date | None = None,
        end: int | str | dt.datetime | dt.date | None = None,
        side: str = "BID",
        *,
        last: int | None = None,
        features: str | None = None,
    ) -> np.ndarray:
        """Bars with start <= ts_ms < end (None: open) — or the ``last`` N — as a (read-only
        when one page) numpy array of RECORD_DTYPE. Pages are fetched and joined.
        ``features``: a configured feature set's name — rows of the bars joined with the
        set's outputs (``joined.joined_dtype``; NaN where a value is still warming up)."""
        if features is not None:
            topic = feature_topic(symbol, side, timeframe, features)
            schema = schema_of(topic, self.list_topics(topic))
            pages = feature_pages(symbol, side, timeframe, schema, start, end, last)
            while pages.next is not None:
                pages.add(self.request(pages.next))
            return joined_history(schema, pages.records(), last)
        pages = HistoryPages(symbol, timeframe, start, end, side, last)
        while pages.next is not None:
            pages.add(self.request(pages.next))
        return pages.records()

    def list_topics(self, prefix: str = "") -> list[gp.TopicInfo]:
        listing: gp.Listing = expect(self.request(gp.ListTopics(prefix=prefix)), gp.Listing)
        return listing.topics

    def status(self) -> gp.Status:
        status: gp.Status = expect(self.request(gp.StatusRequest()), gp.Status)
        return status

    def stream_topics(
        self,
        topics: Iterable[str],
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
        resume: Mapping[str, Position] | None = None,
        features: bool = False,
    ) -> Iterator[BarUpdate]:
        topics = list(topics)
        joiners = self._joiners(topics, self.list_topics, resume) if features else None
        steps_ = self._steps(topics, history, closed_only, timeout_s, resume, joiners)
        with contextlib.closing(steps_) as steps:
            for step in steps:
                if isinstance(step, list):
                    yield from step
                    continue
                socks, wait_s = step
                poller = zmq.Poller()
                for s in socks:
                    poller.register(s, zmq.POLLIN)
                poller.poll(int(wait_s * 1000) + 1)


class AsyncGatewayClient(_Base[AsyncIterator[BarUpdate]]):
    """asyncio client: the same API as GatewayClient, awaited; ``stream`` is an async iterator."""

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def request(self, req: gp.Request) -> Answer:
        call = self._call(req)
        while (answer := call.receive()) is None:
            await wait_readable([call.sock], min(call.left_s(), 0.5))
        return answer

    async def history(
        self,
        symbol: str,
        timeframe: str,
        start: int | str | dt.datetime | dt.date | None = None,
        end: int | str | dt.datetime | dt.date | None = None,
        side: str = "BID",
        *,
        last: int | None = None,
        features: str | None = None,
    ) -> np.ndarray:
        if features is not None:
            topic = feature_topic(symbol, side, timeframe, features)
            schema = schema_of(topic, await self.list_topics(topic))
            pages = feature_pages(symbol, side, timeframe, schema, start, end, last)
            while pages.next is not None:
                pages.add(await self.request(pages.next))
            return joined_history(schema, pages.records(), last)
        pages = HistoryPages(symbol, timeframe, start, end, side, last)
        while pages.next is not None:
            pages.add(await self.request(pages.next))
        return pages.records()

    async def list_topics(self, prefix: str = "") -> list[gp.TopicInfo]:
        listing: gp.Listing = expect(await self.request(gp.ListTopics(prefix=prefix)), gp.Listing)
        return listing.topics

    async def status(self) -> gp.Status:
        status: gp.Status = expect(await self.request(gp.StatusRequest()), gp.Status)
        return status

    async def stream_topics(
        self,
        topics: Iterable[str],
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
        resume: Mapping[str, Position] | None = None,
        features: bool = False,
    ) -> AsyncIterator[BarUpdate]:
        topics = list(topics)
        joiners = None
        if features:
            listed = {t: await self.list_topics(t) for t in topics}
            joiners = self._joiners(topics, listed.__getitem__, resume)
        steps_ = self._steps(topics, history, closed_only, timeout_s, resume, joiners)
        with contextlib.closing(steps_) as steps:
            for step in steps:
                if isinstance(step, list):
                    for item in step:
                        yield item
                    continue
                socks, wait_s = step
                await wait_readable(socks, wait_s + 0.001)


# -- feature topics ------------------------------------------------------------------------


def feature_topic(symbol: str, side: str, timeframe: str, features: str) -> str:
    """The topic of ``symbol``'s ``timeframe`` bars joined with feature set ``features``."""
    return gp.topic_of(symbol, side, f"{timeframe}.{features}")


def schema_of(topic: str, listed: list[gp.TopicInfo]) -> Described:
    """The set a feature topic holds, from the gateway's listing of it; GatewayError
    ``unknown-topic`` when the gateway has no such feature topic."""
    for info in listed:
        if info.topic == topic and info.features is not None:
            return described(info.features)
    raise GatewayError(
        "unknown-topic",
        f"the gateway serves no feature topic {topic!r}: is the feature set configured "
        "([[features]] name and timeframes) and the gateway following the features stage?",
    )


def feature_pages(
    symbol: str,
    side: str,
    timeframe: str,
    schema: Described,
    start: int | str | dt.datetime | dt.date | None,
    end: int | str | dt.datetime | dt.date | None,
    last: int | None,
) -> HistoryPages:
    """The history request of a feature topic (``last`` bars: one bar's records more, as
    the newest bar may be cut)."""
    g1 = layout_stride(schema)
    wanted = None if last is None else (last + 1) * g1
    return HistoryPages(symbol, f"{timeframe}.{schema.name}", start, end, side, wanted)


def joined_history(schema: Described, records: np.ndarray, last: int | None) -> np.ndarray:
    g1 = layout_stride(schema)
    lo, hi = whole_bars(records, g1)
    if last is not None:
        lo = max(lo, hi - last * g1)
    return joined(schema, records[lo:hi])


# -- DataFrames (optional extras, imported lazily) ----------------------------------------

_COLUMNS: Final = ("open", "high", "low", "close", "volume")


def to_pandas(records: np.ndarray) -> Any:
    """A pandas DataFrame indexed by UTC bar open time, with OHLCV, ``provisional`` and
    ``flags`` columns (then the feature columns of joined rows, ``features=``). Needs pandas (``pip install barstream[frames]``)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_pandas needs pandas: pip install 'barstream[frames]'") from e
    index = pd.to_datetime(np.asarray(records["ts_ms"]), unit="ms", utc=True)
    data = {c: np.asarray(records[c]) for c in _COLUMNS}
    data["provisional"] = (np.asarray(records["flags"]) & FLAG_PROVISIONAL) != 0
    data["flags"] = np.asarray(records["flags"])
    for c in _feature_columns(records):
        data[c] = np.asarray(records[c])
    return pd.DataFrame(data, index=pd.Index(index, name="time"))


def to_polars(records: np.ndarray) -> Any:
    """A Polars DataFrame with a UTC ``time`` column, OHLCV, ``provisional`` and ``flags``
    (then the feature columns of joined rows, ``features=``).
    Needs polars (``pip install barstream[frames]``)."""
    try:
        import polars as pl
    except ImportError as e:
        raise ImportError("to_polars needs polars: pip install 'barstream[frames]'") from e
    cols: dict[str, Any] = {
        "time": pl.Series("time", np.asarray(records["ts_ms"])).cast(pl.Datetime("ms", "UTC"))
    }
    for c in _COLUMNS:
        cols[c] = np.asarray(records[c])
    cols["provisional"] = (np.asarray(records["flags"]) & FLAG_PROVISIONAL) != 0
    cols["flags"] = np.asarray(records["flags"])
    for c in _feature_columns(records):
        cols[c] = np.asarray(records[c])
    return pl.DataFrame(cols)


def _feature_columns(records: np.ndarray) -> list[str]:
    """The feature columns of joined rows (``history(..., features=)``), in order: the
    fields that are no bar record field."""
    bar_fields = set(RECORD_DTYPE.names or ())
    return [n for n in records.dtype.names or () if n not in bar_fields]
