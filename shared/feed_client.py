"""The feed client: follow an upstream's feed into a stage.

``FeedClient`` (DEALER, connects) says hello with its marks (``UpstreamMark`` per store key,
from its checkpoint), validates each batch (frames, body length, kind, attachments, gaps),
applies it through an async handler, returns credit, keeps the marks in
``StoreSet.upstream`` so the next commit records them, and reconnects — a new connection,
with jittered exponential backoff — when the upstream disconnects, restarts, goes quiet
for ``PEER_TIMEOUT_S``, says it does not know us, or sends a batch it cannot take. A stage
may ask for records again (``request_resend``).

Liveness: ``upstream_age_s`` (the ``upstream_heartbeat_age_seconds`` gauge) is the time since
the last valid message *from the upstream* (heartbeat, batch, reset, error), across
reconnects — a reconnect is not a message from the upstream, so the age of a dead upstream
keeps growing; before any message it counts from when the client began following.
``lag_s`` (``feed_lag_seconds``) is how long we have been behind the upstream's committed
end, and, once the upstream has been silent past ``PEER_TIMEOUT_S``, at least that silence
(we cannot know we are caught up with an upstream we do not hear). The reconnect timer
(silence on the current connection) is separate and unchanged. Its loop is built from the pieces of
``shared/sockets.py``; the rules are docs/PROTOCOL.md's "Feed protocol".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Protocol

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from barstream.shared import protocol as p
from barstream.shared.checkpoint import UpstreamMark
from barstream.shared.errors import Malformed, ProtocolError
from barstream.shared.metrics import Metrics, stream_labels
from barstream.shared.names import RejectedName, StreamNames, printable
from barstream.shared.protocol import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S
from barstream.shared.ratelog import RateLimitedLog
from barstream.shared.record import DTYPES, KIND_BARS, RECORD_SIZE
from barstream.shared.sockets import Wakeup, read_ready_frames, readable

log = logging.getLogger("barstream.feed")

#: Batches a downstream lets the upstream send ahead of what it has processed.
CREDIT_WINDOW: Final = 32
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 5.0
#: Seconds a follower spends reading and applying batches before yielding to other tasks:
#: a stage whose batches take long to apply must still serve its own downstream meanwhile.
READ_MAX_S: Final = 0.02


class BatchHandler(Protocol):
    async def __call__(
        self, batch: p.Batch, records: np.ndarray, attachments: list[bytes], /
    ) -> None: ...


class FeedClient:
    """Follow an upstream feed; ``marks`` (a StoreSet's upstream map) says where it stands."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        marks: dict[str, UpstreamMark],
        handler: BatchHandler,
        *,
        name: str,
        prefixes: Iterable[str] = ("",),
        metrics: Metrics | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        credit_window: int = CREDIT_WINDOW,
        names: StreamNames | None = None,
    ) -> None:
        """``names``: the store keys this follower takes (shared/names.py); a batch of
        another stream is a counted rejection (dropped, its credit returned) and a
        heartbeat's other ``ends`` are ignored. None: any key (tests, tools)."""
        self.ctx = ctx
        self.endpoint = endpoint
        self.marks = marks
        self.handler = handler
        self.name = name
        self.prefixes = list(prefixes)
        self.metrics = metrics
        self.on_idle = on_idle
        self.credit_window = credit_window
        self.names = names
        self._taken: set[str] = set()  # keys ``names`` accepted (a bounded, configured set)
        self.rejected = 0
        #: Malformed and rejected messages are all counted; logged first, then summarised.
        self.badlog = RateLimitedLog(log, "malformed or rejected messages")
        self.conn = 0  # connection number, +1 per connection (``session`` on the wire)
        self.upstream_instance = ""
        self.upstream_done = False
        self.upstream_ends: dict[str, tuple[int, int]] = {}
        self.batches_in = 0
        self.records_in = 0
        self.malformed = 0
        self.reconnects = 0
        self._sock: zmq.Socket[bytes] | None = None
        self._wake: Wakeup | None = None
        self._closed = False
        self._owed = 0  # credit to return
        self._last_rx = 0.0  # last frame on this connection, or the connect (reconnect timer)
        self._last_tx = 0.0
        self._started = 0.0  # when run() began following (0: never ran)
        self._last_heard = 0.0  # the upstream's last valid message, across reconnects
        self._monitor: zmq.Socket[bytes] | None = None
        self._conn_rx = 0  # messages received on the current connection
        self._resend = False
        self._resend_to: dict[str, int] = {}
        self._behind_since: float | None = None

    # -- public -------------------------------------------------------------------------

    def caught_up(self) -> bool:
        """True once the upstream said done and we hold everything it has."""
        if not self.upstream_done or self._sock is None:
            return False
        for key, (end, gen) in self.upstream_ends.items():
            mark = self.marks.get(key)
            if mark is None or mark.offset != end or mark.generation != gen:
                return False
        return True

    async def run(self, *, until_caught_up: bool = False) -> None:
        """Follow the upstream until ``close()`` (or, in drain mode, until caught up)."""
        backoff = RETRY_MIN_S
        if not self._started:
            self._started = time.monotonic()
        while not self._closed:
            if self._conn_rx:
                backoff = RETRY_MIN_S  # the last connection worked: retry fast again
            self._connect()
            assert self._sock is not None and self._wake is not None
            reason = "closed"
            try:
                reason = await self._conn_loop(until_caught_up)
            finally:
                # A resend comes straight back with a new hello: no bye, which would tell
                # an upstream in drain mode that its last peer left (it would stop before
                # the hello). The old connection is forgotten at the first send to it.
                self._disconnect(bye=reason != "resend requested")
            if reason == "done" or self._closed:
                return
            if reason == "resend requested":
                continue
            self.reconnects += 1
            if self.metrics is not None:
                self.metrics.reconnects.inc()
            delay = backoff * (0.5 + random.random() / 2)
            log.warning(
                "%s: upstream %s: %s; reconnecting in %.2fs",
                self.name,
                self.endpoint,
                reason,
                delay,
            )
            await self._backoff(delay)
            backoff = min(backoff * 2, RETRY_MAX_S)

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.notify()

    def request_resend(self, key: str, offset: int) -> None:
        """Ask the upstream to send store ``key`` again from ``offset`` (below our mark):
        the mark is lowered and a new connection says hello. Used by a stage that skipped
        records while a stream was held and must now process them."""
        mark = self.marks.get(key)
        if mark is None or offset >= mark.offset:
            return
        self.marks[key] = UpstreamMark(
            store_id=mark.store_id, offset=offset, generation=mark.generation
        )
        self._resend_to[key] = offset
        self._resend = True
        if self._wake is not None:
            self._wake.notify()

    @property
    def behind(self) -> bool:
        """True while the last batch ended before the upstream's committed end: more is
        already waiting upstream (a catch-up), so this is no burst's end."""
        return self._behind_since is not None

    @property
    def lag_s(self) -> float:
        """Seconds this follower has been behind its upstream's committed end (0: caught
        up); while the upstream has been silent for over ``PEER_TIMEOUT_S``, at least the
        time since its last message."""
        behind = 0.0 if self._behind_since is None else time.monotonic() - self._behind_since
        age = self.upstream_age_s
        return max(behind, age) if age > PEER_TIMEOUT_S else behind

    @property
    def upstream_age_s(self) -> float:
        """Seconds since the upstream's last valid message, across reconnects (before any:
        since ``run()`` began; -1: never ran)."""
        since = self._last_heard or self._started
        return time.monotonic() - since if since else -1.0

    def _publish_liveness(self) -> None:
        if self.metrics is not None:
            self.metrics.upstream_heartbeat_age.set(self.upstream_age_s)
            self.metrics.feed_lag_seconds.set(self.lag_s)

    async def _backoff(self, delay: float) -> None:
        """Sleep ``delay`` before reconnecting, keeping the liveness gauges current."""
        until = time.monotonic() + delay
        while not self._closed:
            self._publish_liveness()
            left = until - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, HEARTBEAT_INTERVAL_S / 2))

    # -- connection ---------------------------------------------------------------------

    def _connect(self) -> None:
        sock: zmq.Socket[bytes] = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RECONNECT_IVL, 50)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        sock.connect(self.endpoint)
        self._sock = sock
        self._wake = Wakeup(sock)
        # The monitor tells us at once when the upstream goes away (killed, restarted):
        # zmq would reconnect by itself, but a new upstream needs our hello again.
        self._monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self._wake.watch(self._monitor)
        self._conn_rx = 0
        self.conn += 1
        self._owed = 0
        streams = {key: (m.store_id, m.offset, m.generation) for key, m in self.marks.items()}
        hello = p.Hello(
            name=self.name,
            conn=self.conn,
            streams=streams,
            prefixes=self.prefixes,
            credit=self.credit_window,
        )
        sock.send(p.encode(hello))
        self._last_rx = self._last_tx = time.monotonic()

    def _disconnect(self, *, bye: bool = True) -> None:
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._sock is not None:
            if bye:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.send(p.encode(p.Bye(conn=self.conn)), zmq.NOBLOCK)
            if self._monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None

    async def _conn_loop(self, until_caught_up: bool) -> str:
        """One connection's life; returns why it ended."""
        sock, wake = self._sock, self._wake
        assert sock is not None and wake is not None
        while not self._closed:
            if self._resend:
                self._resend = False
                return "resend requested"
            if self._upstream_gone():
                return "upstream disconnected"
            handled = 0
            read_until = time.monotonic() + READ_MAX_S
            for frames in read_ready_frames(sock):
                handled += 1
                self._conn_rx += 1
                self._last_rx = time.monotonic()
                reason = await self._on_message(frames)
                if reason:
                    return reason
                # Return credit as soon as half the window is used (the upstream keeps
                # sending while we work through a long read), and keep the upstream
                # hearing from us while batches take long to apply: it drops a peer
                # silent for PEER_TIMEOUT_S and would resend everything.
                if self._owed >= max(1, self.credit_window // 2) or (
                    time.monotonic() - self._last_tx >= HEARTBEAT_INTERVAL_S
                ):
                    self._send_credit()
                if self._resend or time.monotonic() >= read_until:
                    break  # let other tasks run (this service's own feed server above all)
            now = time.monotonic()
            if (
                self._owed and (self._owed >= self.credit_window // 2 or handled == 0)
            ) or now - self._last_tx >= HEARTBEAT_INTERVAL_S:
                self._send_credit()
            if now - self._last_rx > PEER_TIMEOUT_S:
                return f"no message for {PEER_TIMEOUT_S:.0f}s"
            self._publish_liveness()
            self.badlog.flush()
            if handled:
                if self.on_idle is not None and not readable(sock):
                    await self.on_idle()
                await asyncio.sleep(0)
                continue
            if until_caught_up and self.caught_up():
                if self.on_idle is not None:
                    await self.on_idle()
                return "done"
            if readable(sock):
                continue
            await wake.wait(HEARTBEAT_INTERVAL_S / 2)
        return "closed"

    def _upstream_gone(self) -> bool:
        mon = self._monitor
        gone = False
        while mon is not None and readable(mon):
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            gone = gone or event["event"] == zmq.EVENT_DISCONNECTED
        return gone

    def _send_credit(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(zmq.Again):
            self._sock.send(p.encode(p.Credit(conn=self.conn, n=self._owed)), zmq.NOBLOCK)
            self._owed = 0
            self._last_tx = time.monotonic()

    # -- messages -----------------------------------------------------------------------

    async def _on_message(self, frames: list[zmq.Frame]) -> str:
        try:
            msg = p.decode_down(frames[0].buffer)
        except Malformed as e:
            self._bad(f"bad header: {e}")
            return ""
        self._last_heard = time.monotonic()
        if isinstance(msg, p.Heartbeat):
            if self.upstream_instance and msg.instance != self.upstream_instance:
                self.upstream_instance = msg.instance
                return "upstream restarted"
            self.upstream_instance = msg.instance
            self.upstream_done = msg.done
            self.upstream_ends = {k: v for k, v in msg.ends.items() if self._takes(k) is None}
            if self.metrics is not None:
                for key, (end, _gen) in self.upstream_ends.items():
                    mark = self.marks.get(key)
                    self.metrics.feed_lag_records.labels(*stream_labels(key, strict=False)).set(
                        end - (mark.offset if mark else 0)
                    )
            return ""
        if isinstance(msg, p.Reset):
            return f"upstream reset: {msg.reason}"
        if isinstance(msg, p.Error):
            log.error(
                "%s: upstream %s refused: %s %s", self.name, self.endpoint, msg.code, msg.message
            )
            return f"upstream error {msg.code}"
        return await self._on_batch(msg, frames)

    async def _on_batch(self, batch: p.Batch, frames: list[zmq.Frame]) -> str:
        if batch.conn != self.conn:
            return ""  # stale: answers an older hello
        self._owed += 1
        if not any(batch.stream.startswith(prefix) for prefix in self.prefixes):
            self._bad(f"batch for stream {printable(batch.stream)!r}, not one we follow")
            return ""
        refused = self._takes(batch.stream)
        if refused is not None:
            self._reject(refused)
            return ""
        try:
            records = self._validate(batch, frames)
        except ProtocolError as e:
            self._bad(str(e))
            return f"bad batch: {e}"
        mark = self.marks.get(batch.stream)
        have = mark.offset if mark is not None and mark.store_id == batch.store_id else 0
        if batch.start > have:
            self._bad(f"{batch.stream}: batch starts at {batch.start}, we hold {have}: gap")
            return "gap in feed"
        attachments = [bytes(f.buffer) for f in frames[2 : 2 + batch.attachments]]
        if batch.start < have and self.metrics is not None:
            self.metrics.rewinds_in.inc()
        await self.handler(batch, records, attachments)
        lowered = self._resend_to.pop(batch.stream, None)
        self.marks[batch.stream] = UpstreamMark(
            store_id=batch.store_id,
            offset=batch.start + batch.count if lowered is None else lowered,
            generation=batch.generation,
        )
        self.batches_in += 1
        self.records_in += batch.count
        behind = batch.start + batch.count < batch.end
        if behind and self._behind_since is None:
            self._behind_since = time.monotonic()
        elif not behind:
            self._behind_since = None
        if self.metrics is not None:
            self.metrics.batches_in.inc()
            self.metrics.records_in.inc(batch.count)
            self.metrics.feed_lag_records.labels(*stream_labels(batch.stream, strict=False)).set(
                max(0, batch.end - batch.start - batch.count)
            )
        return ""

    def _validate(self, batch: p.Batch, frames: list[zmq.Frame]) -> np.ndarray:
        if len(frames) != 2 + batch.attachments:
            raise ProtocolError(
                f"{batch.stream}: {len(frames)} frames, header promises {2 + batch.attachments}"
            )
        if batch.start < 0 or batch.count < 0 or batch.kind not in DTYPES:
            raise ProtocolError(
                f"{batch.stream}: bad start/count/kind {batch.start}/{batch.count}/{batch.kind}"
            )
        body = frames[1].buffer
        if len(body) != batch.count * RECORD_SIZE:
            raise ProtocolError(
                f"{batch.stream}: records frame is {len(body)} bytes, header says {batch.count} records"
            )
        if batch.attachments and batch.attachments != batch.count:
            raise ProtocolError(
                f"{batch.stream}: {batch.attachments} attachments for {batch.count} records"
            )
        return np.frombuffer(body, dtype=DTYPES.get(batch.kind, DTYPES[KIND_BARS]))

    def _takes(self, key: str) -> RejectedName | None:
        """None when ``names`` takes ``key`` (or no ``names``), else the rejection."""
        if self.names is None or key in self._taken:
            return None
        refused = self.names.problem(key)
        if refused is None:
            self._taken.add(key)
        return refused

    def _reject(self, e: RejectedName) -> None:
        self.rejected += 1
        if self.metrics is not None:
            self.metrics.rejected.labels("feed_client", e.reason).inc()
        why = str(e)
        self.badlog.event(
            self.name,
            f"upstream {self.endpoint}",
            why,
            f"{self.name}: dropped batch from upstream {self.endpoint}: {why}",
        )

    def _bad(self, why: str) -> None:
        self.malformed += 1
        if self.metrics is not None:
            self.metrics.malformed.labels("feed_client").inc()
        why = printable(why, 300)
        self.badlog.event(
            self.name,
            f"upstream {self.endpoint}",
            why,
            f"{self.name}: dropped malformed message from upstream {self.endpoint}: {why}",
        )
