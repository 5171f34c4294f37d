"""Feeds: serve a ``StoreSet`` to downstream services; follow an upstream's feed.

``FeedServer`` (ROUTER, binds) serves only *stable committed* records: a downstream never
sees data that could vanish if this process crashed. For each peer and stream it keeps the
offset sent so far and the generation it belongs to; after a commit that rewrote records a
peer has seen, it sends "from offset X, the store now reads R" with X the lowest rewritten
offset (the store's rewind log says where). Batches go out only while the peer has credit.

``FeedClient`` (DEALER, connects) says hello with its positions (from its checkpoint),
applies each batch through an async handler, returns credit, keeps the positions in
``StoreSet.upstream`` so the next commit records them, and reconnects (with backoff) when
the upstream goes quiet for ``PEER_TIMEOUT_S`` or says it does not know us.

Both loops are written once here, on plain (non-asyncio) zmq sockets driven by the event
loop through the socket's FD: wake on the FD, on an explicit notify, or on a timer; then
check ``zmq.EVENTS`` and drain everything readable before waiting again. Checking EVENTS
after every operation is what keeps the edge-triggered zmq FD from stranding messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from barstream.shared import protocol as p
from barstream.shared.checkpoint import UpstreamMark
from barstream.shared.errors import ProtocolError
from barstream.shared.metrics import Metrics
from barstream.shared.record import DTYPES, KIND_BARS, RECORD_SIZE
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet

log = logging.getLogger("barstream.feed")

HEARTBEAT_INTERVAL_S: Final = 1.0
#: No message from the other side for this long: the peer is gone / the upstream stalled.
PEER_TIMEOUT_S: Final = 5.0
#: Records per batch at most (4 MiB of records). Only a catch-up fills batches; there
#: fewer, larger batches cut the per-batch work downstream (the resampler's cascade costs
#: ~2 ms per update whatever its size: 20 years in 16k-record batches spent 0.65 s more).
BATCH_MAX_RECORDS: Final = 65536
#: Batches a downstream lets the upstream send ahead of what it has processed.
CREDIT_WINDOW: Final = 32
RETRY_MIN_S: Final = 0.05
RETRY_MAX_S: Final = 5.0
#: Record frames at least this big go to zmq without a copy (below, copying is cheaper).
ZERO_COPY_MIN_BYTES: Final = 64 << 10
#: Messages handled per wake-up before yielding to other tasks.
DRAIN_MAX: Final = 256
#: Seconds a follower spends applying batches before yielding to other tasks: a stage
#: whose batches take long to apply must still serve its own downstream meanwhile.
DRAIN_MAX_S: Final = 0.02


class Wakeup:
    """Wake a task when a zmq socket may have events, when notified, or on a timer."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._fd = fd
        self._loop.add_reader(self._fd, self._event.set)
        self._extra: list[int] = []

    def watch(self, sock: zmq.Socket[bytes]) -> None:
        """Also wake on this socket (e.g. a socket monitor)."""
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._loop.add_reader(fd, self._event.set)
        self._extra.append(fd)

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        if self._event.is_set():
            self._event.clear()
            return
        handle = self._loop.call_later(max(timeout_s, 0.0), self._event.set)
        try:
            await self._event.wait()
        finally:
            handle.cancel()
            self._event.clear()

    def close(self) -> None:
        for fd in (self._fd, *self._extra):
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)


def _readable(sock: zmq.Socket[bytes]) -> bool:
    events = sock.getsockopt(zmq.EVENTS)
    assert isinstance(events, int)
    return bool(events & zmq.POLLIN)


def start_offset(store: Store, pos: p.Position | None) -> int:
    """Where to resume a downstream that holds ``pos`` of this store."""
    if pos is None or pos.store_id != store.store_id.hex() or pos.generation > store.generation:
        return 0
    x = max(0, min(pos.offset, store.stable_length))
    if pos.generation < store.generation:
        floor = store.rewind_floor(pos.generation)
        if floor is not None:
            x = min(x, floor)
    return x


# ---------------------------------------------------------------------------------------
# Upstream side
# ---------------------------------------------------------------------------------------

Attachments = Callable[[str, int, np.ndarray], list[bytes]]
#: ``cut(key, records)`` → how many of ``records`` (a window starting at a batch start) to
#: send so that a batch never splits a group the downstream must see whole (>= 1).
Cut = Callable[[str, np.ndarray], int]


@dataclass
class _StreamState:
    sent: int
    generation: int
    force: bool  # send a (possibly empty) batch at `sent` even with nothing new: a rewind


@dataclass
class _Peer:
    ident: bytes
    name: str
    session: int
    prefixes: list[str]
    credit: int
    wanted: dict[str, p.Position]
    streams: dict[str, _StreamState] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    caught_up_done: bool = False

    def matches(self, key: str) -> bool:
        return any(key.startswith(prefix) for prefix in self.prefixes)


class FeedServer:
    """Serve a StoreSet's committed records to any number of downstream peers."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        stores: StoreSet,
        *,
        metrics: Metrics | None = None,
        attachments: Attachments | None = None,
        cut: Cut | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.stores = stores
        self.metrics = metrics
        self.attachments = attachments
        self.cut = cut
        self.instance = secrets.token_hex(8)
        self.done = False  # drain mode: this service has no more input
        self.peers: dict[bytes, _Peer] = {}
        self.malformed = 0
        self.batches_out = 0
        self.records_out = 0
        self._sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, 0)
        self._sock.setsockopt(zmq.RCVHWM, 10000)
        self._sock.bind(endpoint)
        self.bound = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake: Wakeup | None = None
        self._thread_id = 0  # the serving loop's thread (``run``)
        self._closed = False
        self._ever_peered = False
        self._hb_due = False
        stores.on_commit(self.notify)

    def notify(self) -> None:
        """New records were committed: push them to peers now (called by the commit, in
        the serving loop's thread), and wake the serving loop for the rest."""
        if self._wake is not None:
            if not self._closed and threading.get_ident() == self._thread_id:
                # Sending here saves a loop wake-up (~0.1-0.2 ms) on every commit's path
                # downstream; the serving loop, woken below, still drains the socket (a send
                # can consume the FD's edge) and sends what credit did not allow now.
                self._pump()
            self._wake.notify()

    async def run(self) -> None:
        """Serve until ``close()``."""
        if self._closed:  # closed before it ever ran
            return
        self._wake = Wakeup(self._sock)
        self._thread_id = threading.get_ident()
        next_hb = 0.0
        try:
            while not self._closed:
                self._drain_incoming()
                self._pump()
                now = time.monotonic()
                if now >= next_hb or self._hb_due:
                    self._hb_due = False
                    self._heartbeat(now)
                    next_hb = now + HEARTBEAT_INTERVAL_S
                if _readable(self._sock):
                    await asyncio.sleep(0)
                    continue
                await self._wake.wait(next_hb - time.monotonic())
        finally:
            self._wake.close()

    def drained(self) -> bool:
        """Drain mode: every peer that said hello has all stable records (or has left)."""
        for peer in self.peers.values():
            for key in self.stores.stores:
                if not peer.matches(key):
                    continue
                st = peer.streams.get(key)
                store = self.stores.stores[key]
                if (
                    st is None
                    or st.sent < store.stable_length
                    or st.force
                    or st.generation != store.generation
                ):
                    return False
        return True

    async def flush(self, timeout_s: float) -> bool:
        """Graceful stop: give every connected peer what was committed last (bounded by
        ``timeout_s``; a peer without credit is not waited for past it)."""
        self.notify()
        deadline = time.monotonic() + timeout_s
        while self.peers and not self.drained():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_drained(self, idle_s: float = 2.0, timeout_s: float = 60.0) -> bool:
        """Drain mode (set ``done`` first): wait until every peer has everything and has
        left (a caught-up follower says bye once it saw ``done``); with no peer at all,
        wait ``idle_s`` for one to come."""
        deadline = time.monotonic() + timeout_s
        idle_until = time.monotonic() + idle_s
        self._hb_due = True  # tell peers `done` now, not at the next heartbeat
        self.notify()
        while time.monotonic() < deadline:
            if not self.peers and (self._ever_peered or time.monotonic() > idle_until):
                return True
            if self.peers and self.drained():
                self._hb_due = True
                self.notify()
            await asyncio.sleep(0.01)
        return False

    def close(self, linger_ms: int = 0) -> None:
        """Stop serving. ``linger_ms``: how long queued messages may still go out."""
        self._closed = True
        self.notify()
        self._sock.close(linger=linger_ms)

    # -- internals ----------------------------------------------------------------------

    def _drain_incoming(self) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._bad(
                    frames[0] if frames else b"",
                    f"{len(frames)} frames, expected identity + header",
                )
                continue
            ident, raw = frames
            try:
                msg = p.decode_up(raw)
            except p.Malformed as e:
                self._bad(ident, str(e))
                self._send_ctl(ident, p.Error(code="malformed", message=str(e)))
                continue
            self._handle(ident, msg)

    def _handle(self, ident: bytes, msg: p.Hello | p.Credit | p.Bye) -> None:
        if isinstance(msg, p.Hello):
            if msg.credit < 0 or msg.credit > 100_000:
                self._send_ctl(
                    ident, p.Error(code="bad-credit", message=f"credit {msg.credit} out of range")
                )
                return
            peer = _Peer(
                ident, msg.name, msg.session, msg.prefixes or [""], msg.credit, dict(msg.streams)
            )
            self.peers[ident] = peer
            self._ever_peered = True
            log.info(
                "%s: peer %s hello (session %d, %d streams)",
                self.endpoint,
                msg.name,
                msg.session,
                len(msg.streams),
            )
            self._update_peer_gauge()
            return
        known = self.peers.get(ident)
        if known is None or known.session != msg.session:
            if not isinstance(msg, p.Bye):
                self._send_ctl(ident, p.Reset(reason="unknown peer or session: say hello"))
            return
        known.last_seen = time.monotonic()
        if isinstance(msg, p.Bye):
            del self.peers[ident]
            self._update_peer_gauge()
            return
        if msg.n < 0 or msg.n > 100_000:
            self._bad(ident, f"credit {msg.n} out of range")
            return
        known.credit += msg.n

    def _pump(self) -> None:
        now = time.monotonic()
        for ident, peer in list(self.peers.items()):
            if now - peer.last_seen > PEER_TIMEOUT_S:
                log.info("%s: peer %s timed out", self.endpoint, peer.name)
                del self.peers[ident]
                self._update_peer_gauge()
                continue
            try:
                self._pump_peer(peer)
            except zmq.ZMQError as e:  # EHOSTUNREACH: the peer disconnected
                log.info("%s: peer %s unreachable (%s); dropped", self.endpoint, peer.name, e)
                self.peers.pop(ident, None)
                self._update_peer_gauge()

    def _pump_peer(self, peer: _Peer) -> None:
        progress = True
        while peer.credit > 0 and progress:
            progress = False
            for key, store in self.stores.stores.items():
                if peer.credit <= 0:
                    return
                if not peer.matches(key):
                    continue
                st = peer.streams.get(key)
                if st is None:
                    st = _StreamState(
                        start_offset(store, peer.wanted.get(key)), store.generation, True
                    )
                    peer.streams[key] = st
                elif st.generation != store.generation:
                    floor = store.rewind_floor(st.generation)
                    # floor == sent too: an empty batch tells the peer the new generation.
                    if floor is not None and floor <= st.sent:
                        st.sent = floor
                        st.force = True
                    st.generation = store.generation
                stable = store.stable_length
                if st.sent > stable:  # uncommitted rewrite in progress: wait for the commit
                    continue
                if st.sent == stable and not st.force:
                    continue
                stop = min(stable, st.sent + BATCH_MAX_RECORDS)
                if self.cut is not None and stop < stable and stop > st.sent:
                    stop = st.sent + max(1, self.cut(key, store.view(st.sent, stop)))
                self._send_batch(peer, key, store, st.sent, stop)
                st.sent = stop
                st.force = False
                peer.credit -= 1
                progress = True

    def _send_batch(self, peer: _Peer, key: str, store: Store, start: int, stop: int) -> None:
        # A private copy read with pread (no page faults on the mapping), handed to zmq
        # without a second copy: a later rewind of the store cannot change bytes in flight.
        body = store.read_into(start, stop)
        extra: list[bytes] = []
        if self.attachments is not None and stop > start:
            records = np.frombuffer(body, dtype=store.dtype)
            records.flags.writeable = False
            extra = self.attachments(key, start, records)
        header = p.Batch(
            session=peer.session,
            stream=key,
            store_id=store.store_id.hex(),
            generation=store.generation,
            start=start,
            count=stop - start,
            end=store.stable_length,
            kind=store.meta.kind,
            attachments=len(extra),
            wall_ms=int(time.time() * 1000),
        )
        self._sock.send_multipart(
            [peer.ident, p.encode(header), body, *extra],
            zmq.NOBLOCK,
            copy=len(body) < ZERO_COPY_MIN_BYTES,
        )
        self.batches_out += 1
        self.records_out += stop - start
        if self.metrics is not None:
            self.metrics.batches_out.inc()
            self.metrics.records_out.inc(stop - start)

    def _heartbeat(self, now: float) -> None:
        ends = {key: (s.stable_length, s.generation) for key, s in self.stores.stores.items()}
        for ident, peer in list(self.peers.items()):
            hb = p.Heartbeat(
                instance=self.instance,
                wall_ms=int(time.time() * 1000),
                done=self.done,
                ends={k: v for k, v in ends.items() if peer.matches(k)},
            )
            try:
                self._sock.send_multipart([ident, p.encode(hb)], zmq.NOBLOCK)
            except zmq.ZMQError:
                self.peers.pop(ident, None)
                self._update_peer_gauge()

    def _send_ctl(self, ident: bytes, msg: p.Reset | p.Error) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send_multipart([ident, p.encode(msg)], zmq.NOBLOCK)

    def _bad(self, ident: bytes, why: str) -> None:
        self.malformed += 1
        if self.metrics is not None:
            self.metrics.malformed.labels("feed_server").inc()
        log.warning(
            "%s: dropped malformed message from peer %s: %s", self.endpoint, ident.hex()[:12], why
        )

    def _update_peer_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.peers.set(len(self.peers))


# ---------------------------------------------------------------------------------------
# Downstream side
# ---------------------------------------------------------------------------------------


class BatchHandler(Protocol):
    async def __call__(
        self, batch: p.Batch, records: np.ndarray, attachments: list[bytes], /
    ) -> None: ...


class FeedClient:
    """Follow an upstream feed; positions live in ``positions`` (a StoreSet's upstream map)."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        endpoint: str,
        positions: dict[str, UpstreamMark],
        handler: BatchHandler,
        *,
        name: str,
        prefixes: Iterable[str] = ("",),
        metrics: Metrics | None = None,
        on_idle: Callable[[], Awaitable[None]] | None = None,
        credit_window: int = CREDIT_WINDOW,
    ) -> None:
        self.ctx = ctx
        self.endpoint = endpoint
        self.positions = positions
        self.handler = handler
        self.name = name
        self.prefixes = list(prefixes)
        self.metrics = metrics
        self.on_idle = on_idle
        self.credit_window = credit_window
        self.session = 0
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
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._caught_up = asyncio.Event()
        self._monitor: zmq.Socket[bytes] | None = None
        self._session_rx = 0  # messages received in the current session
        self._resend = False
        self._resend_to: dict[str, int] = {}
        self._behind_since: float | None = None

    # -- public -------------------------------------------------------------------------

    def caught_up(self) -> bool:
        """True once the upstream said done and we hold everything it has."""
        if not self.upstream_done or self._sock is None:
            return False
        for key, (end, gen) in self.upstream_ends.items():
            pos = self.positions.get(key)
            if pos is None or pos.offset != end or pos.generation != gen:
                return False
        return True

    async def run(self, *, until_caught_up: bool = False) -> None:
        """Follow the upstream until ``close()`` (or, in drain mode, until caught up)."""
        backoff = RETRY_MIN_S
        while not self._closed:
            if self._session_rx:
                backoff = RETRY_MIN_S  # the last session worked: retry fast again
            self._connect()
            assert self._sock is not None and self._wake is not None
            try:
                reason = await self._session_loop(until_caught_up)
            finally:
                self._disconnect()
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
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, RETRY_MAX_S)

    def close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.notify()

    def request_resend(self, stream: str, offset: int) -> None:
        """Ask the upstream to send ``stream`` again from ``offset`` (below our position):
        the position is lowered and the session restarts with a new hello. Used by a
        stage that skipped records while a stream was held and must now process them."""
        pos = self.positions.get(stream)
        if pos is None or offset >= pos.offset:
            return
        self.positions[stream] = UpstreamMark(
            store_id=pos.store_id, offset=offset, generation=pos.generation
        )
        self._resend_to[stream] = offset
        self._resend = True
        if self._wake is not None:
            self._wake.notify()

    # -- internals ----------------------------------------------------------------------

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
        self._session_rx = 0
        self.session += 1
        self._owed = 0
        streams = {
            key: p.Position(m.store_id, m.offset, m.generation) for key, m in self.positions.items()
        }
        hello = p.Hello(
            name=self.name,
            session=self.session,
            streams=streams,
            prefixes=self.prefixes,
            credit=self.credit_window,
        )
        sock.send(p.encode(hello))
        self._last_rx = self._last_tx = time.monotonic()

    def _disconnect(self) -> None:
        if self._wake is not None:
            self._wake.close()
            self._wake = None
        if self._sock is not None:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.send(p.encode(p.Bye(session=self.session)), zmq.NOBLOCK)
            if self._monitor is not None:
                with contextlib.suppress(zmq.ZMQError):
                    self._sock.disable_monitor()
                self._monitor.close(linger=0)
                self._monitor = None
            self._sock.close(linger=0)
            self._sock = None

    async def _session_loop(self, until_caught_up: bool) -> str:
        sock, wake = self._sock, self._wake
        assert sock is not None and wake is not None
        while not self._closed:
            if self._resend:
                self._resend = False
                return "resend requested"
            if self._upstream_gone():
                return "upstream disconnected"
            handled = 0
            drain_until = time.monotonic() + DRAIN_MAX_S
            while handled < DRAIN_MAX and not self._resend:
                if handled and time.monotonic() >= drain_until:
                    break  # let other tasks run (this service's own feed server above all)
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                handled += 1
                self._session_rx += 1
                self._last_rx = time.monotonic()
                reason = await self._on_message(frames)
                if reason:
                    return reason
                # Return credit as soon as half the window is used (the upstream keeps
                # sending while we work through a long drain), and keep the upstream
                # hearing from us while batches take long to apply: it drops a peer
                # silent for PEER_TIMEOUT_S and would resend everything.
                if self._owed >= max(1, self.credit_window // 2) or (
                    time.monotonic() - self._last_tx >= HEARTBEAT_INTERVAL_S
                ):
                    self._send_credit()
            now = time.monotonic()
            if (
                self._owed and (self._owed >= self.credit_window // 2 or handled == 0)
            ) or now - self._last_tx >= HEARTBEAT_INTERVAL_S:
                self._send_credit()
            if now - self._last_rx > PEER_TIMEOUT_S:
                return f"no message for {PEER_TIMEOUT_S:.0f}s"
            if self.metrics is not None:
                self.metrics.upstream_heartbeat_age.set(now - self._last_rx)
                self.metrics.feed_lag_seconds.set(self.lag_s)
            if handled:
                if self.on_idle is not None and not _readable(sock):
                    await self.on_idle()
                await asyncio.sleep(0)
                continue
            if until_caught_up and self.caught_up():
                if self.on_idle is not None:
                    await self.on_idle()
                return "done"
            if _readable(sock):
                continue
            await wake.wait(HEARTBEAT_INTERVAL_S / 2)
        return "closed"

    def _upstream_gone(self) -> bool:
        mon = self._monitor
        gone = False
        while mon is not None and _readable(mon):
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                break
            gone = gone or event["event"] == zmq.EVENT_DISCONNECTED
        return gone

    def _send_credit(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(zmq.Again):
            self._sock.send(p.encode(p.Credit(session=self.session, n=self._owed)), zmq.NOBLOCK)
            self._owed = 0
            self._last_tx = time.monotonic()

    async def _on_message(self, frames: list[zmq.Frame]) -> str:
        try:
            msg = p.decode_down(frames[0].buffer)
        except p.Malformed as e:
            self._bad(f"bad header: {e}")
            return ""
        if isinstance(msg, p.Heartbeat):
            if self.upstream_instance and msg.instance != self.upstream_instance:
                self.upstream_instance = msg.instance
                return "upstream restarted"
            self.upstream_instance = msg.instance
            self.upstream_done = msg.done
            self.upstream_ends = dict(msg.ends)
            if self.metrics is not None:
                for key, (end, _gen) in msg.ends.items():
                    pos = self.positions.get(key)
                    self.metrics.feed_lag_records.labels(key).set(end - (pos.offset if pos else 0))
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
        if batch.session != self.session:
            return ""  # stale: answers an older hello
        self._owed += 1
        if not any(batch.stream.startswith(prefix) for prefix in self.prefixes):
            self._bad(f"batch for stream {batch.stream!r}, not one we follow")
            return ""
        try:
            records = self._validate(batch, frames)
        except ProtocolError as e:
            self._bad(str(e))
            return f"bad batch: {e}"
        pos = self.positions.get(batch.stream)
        have = pos.offset if pos is not None and pos.store_id == batch.store_id else 0
        if batch.start > have:
            self._bad(f"{batch.stream}: batch starts at {batch.start}, we hold {have}: gap")
            return "gap in feed"
        attachments = [bytes(f.buffer) for f in frames[2 : 2 + batch.attachments]]
        if batch.start < have and self.metrics is not None:
            self.metrics.rewinds_in.inc()
        await self.handler(batch, records, attachments)
        lowered = self._resend_to.pop(batch.stream, None)
        self.positions[batch.stream] = UpstreamMark(
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
            self.metrics.feed_lag_records.labels(batch.stream).set(
                max(0, batch.end - batch.start - batch.count)
            )
        return ""

    @property
    def behind(self) -> bool:
        """True while the last batch ended before the upstream's committed end: more is
        already waiting upstream (a catch-up), so this is no burst's end."""
        return self._behind_since is not None

    @property
    def lag_s(self) -> float:
        """Seconds this follower has been behind its upstream's committed end (0: caught up)."""
        return 0.0 if self._behind_since is None else time.monotonic() - self._behind_since

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

    def _bad(self, why: str) -> None:
        self.malformed += 1
        if self.metrics is not None:
            self.metrics.malformed.labels("feed_client").inc()
        log.warning(
            "%s: dropped malformed message from upstream %s: %s", self.name, self.endpoint, why
        )
