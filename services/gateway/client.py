"""Consumer client of the barstream gateway: history as numpy arrays, live bars with no gap
and no duplicate, across gateway restarts. Sync and asyncio.

Example::

    from barstream.services.gateway.client import GatewayClient

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
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import zmq

from barstream.services.gateway import query
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import BarstreamError
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE, RECORD_SIZE

if TYPE_CHECKING:
    from barstream.shared.config import Config

log = logging.getLogger("barstream.gateway.client")

DEFAULT_PUBLISH: Final = "tcp://127.0.0.1:7110"
DEFAULT_REQUESTS: Final = "tcp://127.0.0.1:7111"
#: A request unanswered for this long: reconnect and ask again.
REQUEST_TIMEOUT_S: Final = 10.0
#: Updates buffered per topic while a snapshot is on its way; beyond it, resync again.
BUFFER_MAX: Final = 20_000
#: Records a stream keeps of its series (to recognise repeats after a resync).
KEEP_RECORDS: Final = 100_000
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 2.0


class GatewayError(BarstreamError):
    """The gateway refused a request (``code`` from gateway_protocol.ERROR_CODES)."""

    def __init__(self, code: str, message: str, *, endpoint: str = "") -> None:
        self.code = code
        self.endpoint = endpoint
        super().__init__(f"{endpoint}: {code}: {message}" if endpoint else f"{code}: {message}")


@dataclass(frozen=True)
class BarUpdate:
    """ "From ``start_offset`` on, ``topic``'s series now reads ``records``" (see module doc)."""

    topic: str
    seq: int  # the topic sequence number this item is current to
    start_offset: int
    records: np.ndarray
    replaces: int  # bars the consumer already received that this item supersedes
    kind: str  # "history" | "update" | "resync" | "reset"

    @property
    def end_offset(self) -> int:
        return self.start_offset + len(self.records)

    @property
    def provisional(self) -> np.ndarray:
        """Mask of the records that may still change (the open bar)."""
        mask: np.ndarray = (self.records["flags"] & FLAG_PROVISIONAL) != 0
        return mask


# ---------------------------------------------------------------------------------------
# Pure state: one topic followed through snapshots and updates (no I/O)
# ---------------------------------------------------------------------------------------


class _Series:
    """The consumer's copy of the tail of a series: records [base, base + n) in a buffer."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.base = 0
        self.n = 0
        self.buf = np.zeros(1024, dtype=RECORD_DTYPE)

    @property
    def end(self) -> int:
        return self.base + self.n

    def view(self, start: int, stop: int | None = None) -> np.ndarray:
        stop = self.end if stop is None else stop
        return self.buf[start - self.base : stop - self.base]

    def replace(self, start: int, records: np.ndarray) -> int:
        """Series[start:] = records. Returns the first offset that changed (== end when
        nothing did). A start below what is kept resets the copy to ``records``."""
        if start < self.base or self.n == 0:
            old_end = self.end
            self._reset(start, records)
            return start if (len(records) or start < old_end) else self.end
        held = self.view(start, min(self.end, start + len(records)))
        same = query.first_difference(held, records)
        first = start + same
        new_end = start + len(records)
        if same == len(records) and new_end == self.end:
            return self.end  # nothing changed
        need = new_end - self.base
        if need > len(self.buf):
            grown = np.zeros(max(need, 2 * len(self.buf)), dtype=RECORD_DTYPE)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[first - self.base : need] = records[same:]
        self.n = need
        if self.n > 2 * self.keep:
            drop = self.n - self.keep
            self.buf[: self.keep] = self.buf[drop : self.n]
            self.base += drop
            self.n = self.keep
        return first

    def _reset(self, start: int, records: np.ndarray) -> None:
        self.buf = np.zeros(max(1024, 2 * len(records)), dtype=RECORD_DTYPE)
        self.buf[: len(records)] = records
        self.base, self.n = start, len(records)


@dataclass
class _Delta:
    """Consecutive pages / chunks joined before they are applied as one change."""

    start: int
    records: np.ndarray

    def add(self, start: int, records: np.ndarray) -> None:
        if start <= self.start:
            self.start, self.records = start, records.copy()
        else:
            keep = self.records[: start - self.start]
            self.records = np.concatenate([keep, records])

    @property
    def end(self) -> int:
        return self.start + len(self.records)


@dataclass
class _Follower:
    """One topic: its series copy, its last applied seq, and what it waits for."""

    topic: str
    history: int
    closed_only: bool
    keep: int = KEEP_RECORDS
    epoch: str = ""
    seq: int = -1
    state: str = "init"  # init: wants a snapshot; fetch: waits for one; live
    series: _Series = field(init=False)
    closed_end: int = 0  # offset of the first provisional record of the series
    yielded_closed: int = 0  # closed_only: offsets below this were yielded
    buffered: list[tuple[gp.Update, np.ndarray]] = field(default_factory=list)
    overflowed: bool = False
    chunk: _Delta | None = None  # a multi-message update being joined
    chunk_seq: int = -1
    pages: _Delta | None = None  # a multi-page resync being joined
    pages_seq: int = -1  # the seq the joined pages are current to
    received_from: int = 0  # lowest offset the consumer was given (the history item's start)
    resync_needed: bool = False  # reason to resync once the current fetch completes
    started: bool = False

    def __post_init__(self) -> None:
        self.series = _Series(max(self.keep, self.history))

    # -- requests this follower needs ---------------------------------------------------

    def request(self, request_id: int) -> gp.Snapshot:
        self.state = "fetch"
        if not self.started or not self.epoch:
            return gp.Snapshot(topic=self.topic, last=self.history, id=request_id)
        if self.pages is not None:
            return gp.Snapshot(
                topic=self.topic,
                since_seq=self.pages_seq,
                from_offset=self.pages.end,
                epoch=self.epoch,
                id=request_id,
            )
        return gp.Snapshot(
            topic=self.topic,
            since_seq=self.seq,
            from_offset=self.series.end,
            epoch=self.epoch,
            id=request_id,
        )

    def lost(self) -> None:
        """The connection went away: ask again (a resync when we hold a series)."""
        self.state = "init"
        self.chunk = None
        self.pages = None
        self.buffered.clear()
        self.overflowed = False

    # -- inputs -------------------------------------------------------------------------

    def on_reply(self, reply: gp.Records, records: np.ndarray) -> list[BarUpdate]:
        if not self.started or reply.epoch != self.epoch:
            # First snapshot, or the gateway store was rebuilt: start over from this one.
            kind = "history" if not self.started else "reset"
            # A reset supersedes the bars the consumer was given: [received_from, its end).
            held_end = self.yielded_closed if self.closed_only else self.series.end
            replaces = (
                max(0, held_end - max(reply.start, self.received_from)) if self.started else 0
            )
            self.started = True
            self.epoch = reply.epoch
            self.seq = reply.seq
            self.pages = None
            self.received_from = reply.start
            self.series._reset(reply.start, records)
            self.closed_end = query.closed_end(records, reply.start)
            out: list[BarUpdate] = []
            if self.closed_only:
                out.append(self._item(reply.start, self.closed_end, replaces, kind))
                self.yielded_closed = self.closed_end
            else:
                out.append(self._item(reply.start, self.series.end, replaces, kind))
            return out + self._after_fetch()
        if self.pages is None:
            self.pages = _Delta(reply.start, records.copy())
        else:
            self.pages.add(reply.start, records)
        self.pages_seq = reply.seq
        if reply.more:
            self.state = "init"  # ask for the next page (since this page's seq)
            return []
        pages, self.pages = self.pages, None
        self.seq = reply.seq
        return self._apply(pages.start, pages.records, "resync") + self._after_fetch()

    def on_update(self, hdr: gp.Update, records: np.ndarray) -> list[BarUpdate]:
        if self.state != "live":
            if len(self.buffered) >= BUFFER_MAX:
                self.buffered.clear()
                self.overflowed = True
            elif not self.overflowed:
                self.buffered.append((hdr, records.copy()))
            return []
        if hdr.epoch != self.epoch:
            log.warning("%s: gateway epoch changed (store rebuilt); starting over", self.topic)
            self.epoch = ""  # a fresh snapshot, yielded as a "reset" of what the consumer holds
            self.state = "init"
            return []
        expected = (self.chunk_seq if self.chunk is not None else self.seq) + 1
        if hdr.seq < expected:
            return []  # covered by the snapshot already applied
        if hdr.seq > expected:
            log.warning(
                "%s: sequence gap: got %d, expected %d (messages dropped); resyncing",
                self.topic,
                hdr.seq,
                expected,
            )
            self.chunk = None
            self.state = "init"
            return []
        if self.chunk is None:
            self.chunk = _Delta(hdr.start, records.copy())
        else:
            self.chunk.add(hdr.start, records)
        self.chunk_seq = hdr.seq
        if hdr.start + hdr.count < hdr.end:
            return []  # more of this change follows
        chunk, self.chunk = self.chunk, None
        if chunk.start > self.series.end:
            log.warning(
                "%s: update starts at %d past our end %d; resyncing",
                self.topic,
                chunk.start,
                self.series.end,
            )
            self.state = "init"
            return []
        self.seq = hdr.seq
        return self._apply(chunk.start, chunk.records, "update")

    def on_heartbeat(self, seq: int | None) -> None:
        if self.state != "live" or seq is None:
            return
        last = self.chunk_seq if self.chunk is not None else self.seq
        if seq > last:
            log.warning(
                "%s: heartbeat says seq %d, we applied %d; resyncing", self.topic, seq, last
            )
            self.chunk = None
            self.state = "init"

    # -- internals ----------------------------------------------------------------------

    def _after_fetch(self) -> list[BarUpdate]:
        self.state = "live"
        if self.overflowed:
            self.overflowed = False
            self.buffered.clear()
            self.state = "init"
            return []
        pending, self.buffered = self.buffered, []
        out: list[BarUpdate] = []
        for hdr, records in pending:
            if self.state != "live":
                break
            out += self.on_update(hdr, records)
        return out

    def _apply(self, start: int, records: np.ndarray, kind: str) -> list[BarUpdate]:
        if start < self.received_from:
            # Below what the consumer was ever given (a conservative resync answer): its
            # view starts at received_from, so the change is clipped there.
            records = records[self.received_from - start :]
            start = self.received_from
        old_end = self.series.end
        first = self.series.replace(start, records)
        new_end = self.series.end
        if first >= new_end and new_end == old_end:
            return []
        if self.closed_end >= first:
            self.closed_end = query.closed_end(self.series.view(first), first)
        if not self.closed_only:
            replaces = max(0, old_end - max(first, self.received_from))
            return [self._item(first, new_end, replaces, kind)]
        ce = self.closed_end
        if first >= self.yielded_closed:
            if ce <= self.yielded_closed:
                return []
            item = self._item(self.yielded_closed, ce, 0, kind)
        else:
            lo = min(first, ce)
            replaces = max(0, self.yielded_closed - max(lo, self.received_from))
            item = self._item(lo, ce, replaces, kind)
        self.yielded_closed = ce
        return [item]

    def _item(self, start: int, stop: int, replaces: int, kind: str) -> BarUpdate:
        lo = max(start, self.series.base)
        return BarUpdate(
            topic=self.topic,
            seq=self.seq,
            start_offset=lo,
            records=self.series.view(lo, max(lo, stop)).copy(),
            replaces=replaces,
            kind=kind,
        )


# ---------------------------------------------------------------------------------------
# The non-blocking driver shared by the sync and async clients
# ---------------------------------------------------------------------------------------


class _Driver:
    """Sockets and followers of one stream; ``pump()`` never blocks."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        publish: str,
        requests: str,
        followers: list[_Follower],
        *,
        rcvhwm: int,
    ) -> None:
        self.ctx = ctx
        self.publish = publish
        self.requests = requests
        self.followers = {f.topic: f for f in followers}
        self.rcvhwm = rcvhwm
        self.sub: zmq.Socket[bytes] | None = None
        self.dealer: zmq.Socket[bytes] | None = None
        self.next_id = 1
        self.inflight: dict[int, tuple[str, float]] = {}  # id -> topic, deadline
        self.subscribed = False  # a heartbeat proved the subscriptions are active
        self.last_rx = 0.0
        self.connect_deadline = 0.0
        self.instance = ""
        self.resyncs = 0
        self.reconnects = 0
        self.gaps = 0
        self.backoff = RETRY_MIN_S
        self.retry_at = 0.0
        self.connect()

    def sockets(self) -> list[zmq.Socket[bytes]]:
        return [s for s in (self.sub, self.dealer) if s is not None]

    def connect(self) -> None:
        sub: zmq.Socket[bytes] = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, self.rcvhwm)
        for topic in self.followers:
            sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
        sub.setsockopt(zmq.SUBSCRIBE, gp.HEARTBEAT_TOPIC)
        sub.connect(self.publish)
        dealer: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.requests)
        self.sub, self.dealer = sub, dealer
        self.subscribed = False
        self.inflight.clear()
        now = time.monotonic()
        self.last_rx = now
        self.connect_deadline = now + gp.HEARTBEAT_TIMEOUT_S

    def close(self) -> None:
        for s in self.sockets():
            s.close(linger=0)
        self.sub = self.dealer = None

    def reconnect(self, why: str) -> None:
        self.reconnects += 1
        log.warning("gateway %s: %s; reconnecting and resyncing", self.publish, why)
        self.close()
        for f in self.followers.values():
            f.lost()
        self.connect()

    def timeout_s(self) -> float:
        """Seconds until pump() has something to do without a socket event."""
        now = time.monotonic()
        deadlines = [self.last_rx + gp.HEARTBEAT_TIMEOUT_S]
        if not self.subscribed:
            deadlines.append(self.connect_deadline)
        deadlines += [d for _, d in self.inflight.values()]
        return max(0.0, min(deadlines) - now)

    def pump(self) -> list[BarUpdate]:
        out: list[BarUpdate] = []
        if self.sub is None or self.dealer is None:
            return out
        for _ in range(1000):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self.last_rx = time.monotonic()
            out += self._on_publication(frames)
        for _ in range(1000):
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            out += self._on_reply(frames)
        now = time.monotonic()
        if self.subscribed:
            for f in self.followers.values():
                if f.state == "init":
                    self._ask(f, now)
        if now - self.last_rx > gp.HEARTBEAT_TIMEOUT_S:
            self.reconnect(f"no message for {gp.HEARTBEAT_TIMEOUT_S}s (gateway gone or stalled)")
        elif not self.subscribed and now > self.connect_deadline:
            self.reconnect("no heartbeat after connecting")
        elif any(deadline < now for _, deadline in self.inflight.values()):
            self.reconnect(f"request unanswered for {REQUEST_TIMEOUT_S}s")
        return out

    def _ask(self, f: _Follower, now: float) -> None:
        assert self.dealer is not None
        rid = self.next_id
        self.next_id += 1
        req = f.request(rid)
        if req.since_seq >= 0:
            self.resyncs += 1
        self.inflight[rid] = (f.topic, now + REQUEST_TIMEOUT_S)
        try:
            self.dealer.send(gp.encode(req), zmq.NOBLOCK)
        except zmq.Again:
            f.state = "init"
            del self.inflight[rid]

    def _on_publication(self, frames: list[zmq.Frame]) -> list[BarUpdate]:
        topic = frames[0].bytes
        try:
            msg = gp.decode_publication(frames[1].buffer if len(frames) > 1 else b"")
        except gp.Malformed as e:
            log.warning("gateway %s: dropped a bad publication: %s", self.publish, e)
            return []
        if isinstance(msg, gp.Heartbeat):
            if not self.subscribed:
                self.subscribed = True
            if self.instance and msg.instance != self.instance:
                log.info(
                    "gateway %s restarted (instance %s); asking again", self.publish, msg.instance
                )
                for topic_name, _ in self.inflight.values():
                    self.followers[topic_name].state = "init"  # that request died with it
                self.inflight.clear()
            self.instance = msg.instance
            for name, f in self.followers.items():
                before = f.state
                f.on_heartbeat(msg.seqs.get(name))
                if before == "live" and f.state == "init":
                    self.gaps += 1
            return []
        follower = self.followers.get(topic.decode(errors="replace"))
        if follower is None or len(frames) != 3 or len(frames[2].buffer) != msg.count * RECORD_SIZE:
            return []
        before = follower.state
        items = follower.on_update(msg, np.frombuffer(frames[2].buffer, dtype=RECORD_DTYPE))
        if before == "live" and follower.state == "init":
            self.gaps += 1
        return items

    def _on_reply(self, frames: list[zmq.Frame]) -> list[BarUpdate]:
        try:
            reply = gp.decode_reply(frames[0].buffer)
        except gp.Malformed as e:
            log.warning("gateway %s: dropped a bad reply: %s", self.requests, e)
            return []
        entry = self.inflight.pop(reply.id, None)
        if entry is None:
            return []  # answers a request from before a reconnect
        f = self.followers[entry[0]]
        if isinstance(reply, gp.Error):
            if reply.code == "stale-epoch" or (reply.code == "bad-range" and f.started):
                f.epoch = ""  # a fresh snapshot, yielded as a "reset" (see on_update)
                f.state = "init"
                return []
            raise GatewayError(reply.code, reply.message, endpoint=self.requests)
        if not isinstance(reply, gp.Records) or len(frames) != 2:
            log.warning("gateway %s: unexpected reply %s", self.requests, type(reply).__name__)
            f.state = "init"
            return []
        records = np.frombuffer(frames[1].buffer, dtype=RECORD_DTYPE)
        if len(records) != reply.count:
            f.state = "init"
            return []
        self.backoff = RETRY_MIN_S
        return f.on_reply(reply, records)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def _ms(value: int | float | str | dt.datetime | dt.date | None) -> int | None:
    """UTC milliseconds from an int (ms), ISO text, a datetime (naive = UTC) or a date."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time must be ms since the epoch, ISO text or a datetime, not a bool")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(
            dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000
        )
    raise TypeError(f"cannot read {value!r} as a time")


class _Base:
    def __init__(
        self,
        publish: str = DEFAULT_PUBLISH,
        requests: str = DEFAULT_REQUESTS,
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        rcvhwm: int = gp.PUBLISH_HWM,
        keep_records: int = KEEP_RECORDS,
    ) -> None:
        self.publish = publish
        self.requests = requests
        self.timeout_s = timeout_s
        self.rcvhwm = rcvhwm
        self.keep_records = keep_records
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._req: zmq.Socket[bytes] | None = None
        self._next_id = 1
        self.drivers: list[_Driver] = []
        self._ended = [0, 0, 0]  # resyncs, gaps, reconnects of finished streams

    @classmethod
    def from_config(cls, config: Config, **kwargs: Any) -> Any:
        """A client for the gateway a pipeline configuration describes."""
        return cls(
            config.gateway.publish.replace("://0.0.0.0:", "://127.0.0.1:"),
            config.gateway.requests.replace("://0.0.0.0:", "://127.0.0.1:"),
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

    def _end(self, driver: _Driver) -> None:
        driver.close()
        self.drivers.remove(driver)
        counts = (driver.resyncs, driver.gaps, driver.reconnects)
        self._ended = [a + b for a, b in zip(self._ended, counts, strict=True)]

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

    def _prepare(self, req: gp.Request) -> bytes:
        req.id = self._next_id
        self._next_id += 1
        return gp.encode(req)

    def _check(self, req: gp.Request, frames: list[zmq.Frame]) -> gp.Reply | None:
        """The decoded reply to ``req``; None for a stale reply (an earlier, timed-out one)."""
        reply = gp.decode_reply(frames[0].buffer)
        if reply.id != req.id:
            return None
        if isinstance(reply, gp.Error):
            raise GatewayError(reply.code, reply.message, endpoint=self.requests)
        return reply

    def _driver(self, topics: Iterable[str], history: int, closed_only: bool) -> _Driver:
        """A connected stream over ``topics``, tracked for the client's counters."""
        driver = _Driver(
            self.ctx,
            self.publish,
            self.requests,
            self._followers(topics, history, closed_only),
            rcvhwm=self.rcvhwm,
        )
        self.drivers.append(driver)
        return driver

    def _followers(self, topics: Iterable[str], history: int, closed_only: bool) -> list[_Follower]:
        out = [_Follower(t, history, closed_only, keep=self.keep_records) for t in topics]
        if not out:
            raise ValueError("stream of no topic")
        return out

    def _history_next(
        self, reply: gp.Records, page: np.ndarray, req: gp.History
    ) -> gp.History | None:
        if not reply.more or not len(page):
            return None
        return gp.History(topic=req.topic, start_ms=int(page["ts_ms"][-1]) + 1, end_ms=req.end_ms)


class GatewayClient(_Base):
    """Blocking client (see the module docstring). Not thread-safe: one per thread."""

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._drop_socket()
        for d in self.drivers:
            d.close()
        self.ctx.destroy(linger=0)

    def request(self, req: gp.Request) -> tuple[gp.Reply, np.ndarray | None]:
        """Send one request, wait (``timeout_s``) for its reply. Raises GatewayError on a
        refusal, TimeoutError when the gateway does not answer."""
        sock = self._socket()
        sock.send(self._prepare(req))
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._drop_socket()  # a late reply must not answer the next request
                raise TimeoutError(f"gateway {self.requests}: no reply in {self.timeout_s}s")
            if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                continue
            frames = sock.recv_multipart(copy=False)
            reply = self._check(req, frames)
            if reply is None:
                continue
            data = None
            if isinstance(reply, gp.Records):
                data = np.frombuffer(frames[1].buffer, dtype=RECORD_DTYPE)
            return reply, data

    def history(
        self,
        symbol: str,
        timeframe: str,
        start: int | str | dt.datetime | dt.date | None = None,
        end: int | str | dt.datetime | dt.date | None = None,
        side: str = "BID",
        *,
        last: int | None = None,
    ) -> np.ndarray:
        """Bars with start <= ts_ms < end (None: open) — or the ``last`` N — as a (read-only
        when one page) numpy array of RECORD_DTYPE. Pages are fetched and joined."""
        topic = gp.topic_of(symbol, side, timeframe)
        req: gp.History | None = (
            gp.History(topic=topic, last=last)
            if last is not None
            else gp.History(topic=topic, start_ms=_ms(start), end_ms=_ms(end))
        )
        pages = []
        while req is not None:
            reply, data = self.request(req)
            assert isinstance(reply, gp.Records) and data is not None
            pages.append(data)
            req = self._history_next(reply, data, req)
        return pages[0] if len(pages) == 1 else np.concatenate(pages)

    def list_topics(self, prefix: str = "") -> list[gp.TopicInfo]:
        reply, _ = self.request(gp.ListTopics(prefix=prefix))
        assert isinstance(reply, gp.Listing)
        return reply.topics

    def status(self) -> gp.Status:
        reply, _ = self.request(gp.StatusRequest())
        assert isinstance(reply, gp.Status)
        return reply

    def stream(
        self,
        symbol: str,
        timeframe: str,
        side: str = "BID",
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[BarUpdate]:
        """The last ``history`` bars, then every change, gap-free (see the module doc).
        ``timeout_s``: raise TimeoutError when no item comes for that long (None: wait)."""
        return self.stream_topics(
            [gp.topic_of(symbol, side, timeframe)], history, closed_only, timeout_s=timeout_s
        )

    def stream_topics(
        self,
        topics: Iterable[str],
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[BarUpdate]:
        """``stream`` over several topics on one connection (items carry ``topic``)."""
        driver = self._driver(topics, history, closed_only)
        try:
            last_item = time.monotonic()
            while True:
                items = driver.pump()
                if items:
                    yield from items
                    last_item = time.monotonic()
                    continue
                if timeout_s is not None and time.monotonic() - last_item > timeout_s:
                    raise TimeoutError(f"no bar update for {timeout_s}s from {self.publish}")
                poller = zmq.Poller()
                for s in driver.sockets():
                    poller.register(s, zmq.POLLIN)
                wait = driver.timeout_s()
                if timeout_s is not None:
                    wait = min(wait, max(0.0, last_item + timeout_s - time.monotonic()))
                poller.poll(int(min(wait, 1.0) * 1000) + 1)
        finally:
            self._end(driver)


class AsyncGatewayClient(_Base):
    """asyncio client: the same API as GatewayClient, awaited; ``stream`` is an async iterator."""

    async def __aenter__(self) -> AsyncGatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._drop_socket()
        for d in self.drivers:
            d.close()
        self.ctx.destroy(linger=0)

    async def request(self, req: gp.Request) -> tuple[gp.Reply, np.ndarray | None]:
        sock = self._socket()
        sock.send(self._prepare(req))
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._drop_socket()
                    raise TimeoutError(
                        f"gateway {self.requests}: no reply in {self.timeout_s}s"
                    ) from None
                await _readable([sock], min(left, 0.5))
                continue
            reply = self._check(req, frames)
            if reply is None:
                continue
            data = None
            if isinstance(reply, gp.Records):
                data = np.frombuffer(frames[1].buffer, dtype=RECORD_DTYPE)
            return reply, data

    async def history(
        self,
        symbol: str,
        timeframe: str,
        start: int | str | dt.datetime | dt.date | None = None,
        end: int | str | dt.datetime | dt.date | None = None,
        side: str = "BID",
        *,
        last: int | None = None,
    ) -> np.ndarray:
        topic = gp.topic_of(symbol, side, timeframe)
        req: gp.History | None = (
            gp.History(topic=topic, last=last)
            if last is not None
            else gp.History(topic=topic, start_ms=_ms(start), end_ms=_ms(end))
        )
        pages = []
        while req is not None:
            reply, data = await self.request(req)
            assert isinstance(reply, gp.Records) and data is not None
            pages.append(data)
            req = self._history_next(reply, data, req)
        return pages[0] if len(pages) == 1 else np.concatenate(pages)

    async def list_topics(self, prefix: str = "") -> list[gp.TopicInfo]:
        reply, _ = await self.request(gp.ListTopics(prefix=prefix))
        assert isinstance(reply, gp.Listing)
        return reply.topics

    async def status(self) -> gp.Status:
        reply, _ = await self.request(gp.StatusRequest())
        assert isinstance(reply, gp.Status)
        return reply

    def stream(
        self,
        symbol: str,
        timeframe: str,
        side: str = "BID",
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[BarUpdate]:
        return self.stream_topics(
            [gp.topic_of(symbol, side, timeframe)], history, closed_only, timeout_s=timeout_s
        )

    async def stream_topics(
        self,
        topics: Iterable[str],
        history: int = 0,
        closed_only: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[BarUpdate]:
        driver = self._driver(topics, history, closed_only)
        try:
            last_item = time.monotonic()
            while True:
                items = driver.pump()
                if items:
                    for item in items:
                        yield item
                    last_item = time.monotonic()
                    continue
                if timeout_s is not None and time.monotonic() - last_item > timeout_s:
                    raise TimeoutError(f"no bar update for {timeout_s}s from {self.publish}")
                wait = driver.timeout_s()
                if timeout_s is not None:
                    wait = min(wait, max(0.0, last_item + timeout_s - time.monotonic()))
                await _readable(driver.sockets(), min(wait, 1.0) + 0.001)
        finally:
            self._end(driver)


async def _readable(socks: list[zmq.Socket[bytes]], timeout_s: float) -> None:
    """Wait until one of ``socks`` may have input (its FD fired) or ``timeout_s`` passed.
    zmq FDs are edge-triggered: callers drain with NOBLOCK before waiting again."""
    for s in socks:
        events = s.getsockopt(zmq.EVENTS)
        if isinstance(events, int) and events & zmq.POLLIN:
            return
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    fds = []
    for s in socks:
        fd = s.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        loop.add_reader(fd, event.set)
        fds.append(fd)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)
    finally:
        for fd in fds:
            loop.remove_reader(fd)


# ---------------------------------------------------------------------------------------
# Frames (optional extras, imported lazily)
# ---------------------------------------------------------------------------------------

_COLUMNS: Final = ("open", "high", "low", "close", "volume")


def to_pandas(records: np.ndarray) -> Any:
    """A pandas DataFrame indexed by UTC bar open time, with OHLCV, ``provisional`` and
    ``flags`` columns. Needs pandas (``pip install barstream[frames]``)."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("to_pandas needs pandas: pip install 'barstream[frames]'") from e
    index = pd.to_datetime(np.asarray(records["ts_ms"]), unit="ms", utc=True)
    data = {c: np.asarray(records[c]) for c in _COLUMNS}
    data["provisional"] = (np.asarray(records["flags"]) & FLAG_PROVISIONAL) != 0
    data["flags"] = np.asarray(records["flags"])
    return pd.DataFrame(data, index=pd.Index(index, name="time"))


def to_polars(records: np.ndarray) -> Any:
    """A Polars DataFrame with a UTC ``time`` column, OHLCV, ``provisional`` and ``flags``.
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
    return pl.DataFrame(cols)
