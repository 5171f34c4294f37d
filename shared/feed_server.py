"""The feed server: serve a ``StoreSet``'s committed records to downstream peers.

``FeedServer`` (ROUTER, binds) serves only *stable committed* records: a downstream never
sees data that could vanish if this process crashed. For each peer and store key it keeps
the offset sent so far and the generation it belongs to; after a commit that rewrote
records a peer has seen, it sends "from offset X, the store now reads R" with X the lowest
rewritten offset (the store's rewind log says where). Batches go out only while the peer
has credit (one batch = one credit); every peer gets a heartbeat each
``HEARTBEAT_INTERVAL_S`` and is forgotten after ``PEER_TIMEOUT_S`` of silence.

A commit (``StoreSet.on_commit`` → ``notify``) sends at once from inside the commit when it
runs on the serving loop's thread, and wakes the loop (``shared/sockets.py``) for the rest.
The rules (resume, rewinds, credits, drain mode) are docs/PROTOCOL.md's "Feed protocol".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import zmq

from barstream.shared import protocol as p
from barstream.shared import sockets
from barstream.shared.checkpoint import UpstreamMark
from barstream.shared.errors import Malformed
from barstream.shared.metrics import Metrics
from barstream.shared.names import printable
from barstream.shared.protocol import HEARTBEAT_INTERVAL_S, PEER_TIMEOUT_S
from barstream.shared.ratelog import RateLimitedLog
from barstream.shared.sockets import Wakeup
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet

log = logging.getLogger("barstream.feed")

#: Records per batch at most (4 MiB of records). Only a catch-up fills batches; there
#: fewer, larger batches cut the per-batch work downstream (the resampler's cascade costs
#: ~2 ms per update whatever its size: 20 years in 16k-record batches spent 0.65 s more).
BATCH_MAX_RECORDS: Final = 65536
#: Record frames at least this big go to zmq without a copy (below, copying is cheaper).
ZERO_COPY_MIN_BYTES: Final = 64 << 10
#: A hello's or credit's ``credit`` outside 0..CREDIT_MAX is refused / counted malformed.
CREDIT_MAX: Final = 100_000
#: Messages queued for one peer at most (zmq SNDHWM). Credits bound what a follower is
#: sent; this bounds what a peer that never reads (error replies, heartbeats) costs us: past
#: it the peer is dropped (ROUTER_MANDATORY: EAGAIN), never queued in memory without end.
PEER_QUEUE_MAX: Final = 10_000
#: Messages queued from one peer before zmq stops reading its connection (a follower sends
#: a credit per half window and a keepalive a second: far fewer).
PEER_QUEUE_IN: Final = 1000

#: ``attachments(key, start, records)`` → one extra frame per record (the downloader's bodies).
Attachments = Callable[[str, int, np.ndarray], list[bytes]]
#: ``cut(key, records)`` → how many of ``records`` (a window starting at a batch start) to
#: send so that a batch never splits a group the downstream must see whole (>= 1).
Cut = Callable[[str, np.ndarray], int]


def start_offset(store: Store, mark: UpstreamMark | None) -> int:
    """Where to resume a downstream that holds ``mark`` of this store."""
    if mark is None or mark.store_id != store.store_id.hex() or mark.generation > store.generation:
        return 0
    x = max(0, min(mark.offset, store.stable_length))
    if mark.generation < store.generation:
        floor = store.rewind_floor(mark.generation)
        if floor is not None:
            x = min(x, floor)
    return x


@dataclass
class _StreamState:
    sent: int
    generation: int
    force: bool  # send a (possibly empty) batch at `sent` even with nothing new: a rewind


@dataclass
class _Peer:
    ident: bytes
    name: str
    conn: int
    prefixes: list[str]
    credit: int
    wanted: dict[str, UpstreamMark]
    streams: dict[str, _StreamState] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)

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
        config_key: str = "endpoint",
    ) -> None:
        """Bind ``endpoint`` now (``config_key``: the configuration key holding it, named
        by the BindError a failed bind raises); ``run()`` serves."""
        self.endpoint = endpoint
        self.stores = stores
        self.metrics = metrics
        self.attachments = attachments
        self.cut = cut
        self.instance = secrets.token_hex(8)
        self.done = False  # drain mode: this service has no more input
        self.peers: dict[bytes, _Peer] = {}
        self.malformed = 0
        #: Malformed messages are all counted; logged first per peer, then summarised.
        self.badlog = RateLimitedLog(log, "malformed messages")
        self.batches_out = 0
        self.records_out = 0
        self._sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, PEER_QUEUE_MAX)
        # What downstream peers send is control headers only: a bigger frame is dropped
        # by zmq (with its connection), and a flooding peer queues at most PEER_QUEUE_IN.
        self._sock.setsockopt(zmq.RCVHWM, PEER_QUEUE_IN)
        self._sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_HEADER_BYTES + 4096)
        self.bound = sockets.bind(self._sock, endpoint, config_key)
        self._wake: Wakeup | None = None
        self._thread_id = 0  # the serving loop's thread (``run``)
        self._closed = False
        self._ever_peered = False
        #: peer name → (when, how) it left before it had everything (``_drop``)
        self._owed: dict[str, tuple[float, str]] = {}
        #: names of every peer that said hello (drain mode's expected followers)
        self._hello_names: set[str] = set()
        self._hb_due = False
        self._next_hb = 0.0
        stores.on_commit(self.notify)

    def notify(self) -> None:
        """New records were committed: push them to peers now (called by the commit, in
        the serving loop's thread), and wake the serving loop for the rest."""
        if self._wake is not None:
            if not self._closed and threading.get_ident() == self._thread_id:
                # Sending here saves a loop wake-up (~0.1-0.2 ms) on every commit's path
                # downstream; the serving loop, woken below, still reads the socket (a send
                # can consume the FD's edge) and sends what credit did not allow now.
                self._pump()
            self._wake.notify()

    async def run(self) -> None:
        """Serve until ``close()``."""
        if self._closed:  # closed before it ever ran
            return
        self._wake = Wakeup(self._sock)
        self._thread_id = threading.get_ident()
        await sockets.serve(
            self._sock,
            self._on_message,
            timeout_s=HEARTBEAT_INTERVAL_S,
            wake=self._wake,
            tick=self._tick,
            running=lambda: not self._closed,
        )

    def drained(self) -> bool:
        """Drain mode: every peer that said hello has all stable records (or has left)."""
        return all(self._has_all(peer) for peer in self.peers.values())

    def _has_all(self, peer: _Peer) -> bool:
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

    def _drop(self, ident: bytes, why: str) -> None:
        """Forget a peer. One that leaves (times out, becomes unreachable, says bye while
        stopping) before it has everything is owed it: drain mode waits for it to come back
        (``wait_drained``) instead of taking its absence for the end of the work."""
        peer = self.peers.pop(ident, None)
        self._update_peer_gauge()
        if peer is None:
            return
        # One that timed out is owed even when it was *sent* everything: it went silent
        # with batches in hand, so it may not have applied them (it comes back with its marks).
        if not self._has_all(peer) or why.startswith("timed out"):
            self._owed.setdefault(peer.name, (time.monotonic(), why))
        else:
            self._owed.pop(peer.name, None)

    async def deliver_pending(self, timeout_s: float) -> bool:
        """Graceful stop: give every connected peer what was committed last (bounded by
        ``timeout_s``; a peer without credit is not waited for past it). True when every
        peer has it."""
        self.notify()
        deadline = time.monotonic() + timeout_s
        while self.peers and not self.drained():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def wait_drained(
        self, idle_s: float = 2.0, timeout_s: float = 60.0, expect: Collection[str] = ()
    ) -> bool:
        """Drain mode (set ``done`` first): wait until every peer has everything and has
        left (a caught-up follower says bye once it saw ``done``); with no peer at all,
        wait ``idle_s`` for one to come. However long connected peers take is waited for
        (a slow downstream is still working); a peer that left before it had everything
        is waited for ``timeout_s`` to come back — then False (``owed`` names it). Peers
        that have everything but stay (not in drain mode themselves) are given
        ``timeout_s`` to say bye, then True. ``expect``: the names of the followers this
        run has (a rebuild knows them): one that has not said hello yet is owed everything
        — waited for ``timeout_s``, however soon the others are done (a follower that
        starts slowly must not find its upstream gone)."""
        start = time.monotonic()
        for name in expect:
            if name not in self._hello_names:
                self._owed.setdefault(name, (start, "never connected"))
        idle_until = time.monotonic() + idle_s
        self._hb_due = True  # tell peers `done` now, not at the next heartbeat
        self.notify()
        all_since: float | None = None  # since when every connected peer has everything
        while True:
            now = time.monotonic()
            if not self.peers:
                all_since = None
                if self._owed:
                    if now - min(t for t, _ in self._owed.values()) > timeout_s:
                        return False
                elif self._ever_peered or now > idle_until:
                    return True
            elif self.drained():
                self._hb_due = True
                self.notify()
                all_since = now if all_since is None else all_since
                if now - all_since > timeout_s and not self._owed:
                    return True  # they have it all and stay (not draining themselves)
            else:
                all_since = None
            await asyncio.sleep(0.01)

    @property
    def owed(self) -> dict[str, str]:
        """Peers (by name) that left before they had everything, and how they left."""
        return {name: why for name, (_, why) in self._owed.items()}

    def close(self, linger_ms: int = 0) -> None:
        """Stop serving. ``linger_ms``: how long queued messages may still go out (the
        Service lingers ``STOP_DELIVER_S`` after ``deliver_pending`` succeeded, else 0)."""
        self._closed = True
        self.notify()
        self._sock.close(linger=linger_ms)

    # -- internals ----------------------------------------------------------------------

    def _tick(self) -> float:
        """After each read: send what credit allows, heartbeat when due; → seconds to wait."""
        self._pump()
        now = time.monotonic()
        if now >= self._next_hb or self._hb_due:
            self.badlog.flush()
            self._hb_due = False
            self._heartbeat(now)
            self._next_hb = now + HEARTBEAT_INTERVAL_S
        return self._next_hb - time.monotonic()

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._bad(
                frames[0] if frames else b"", f"{len(frames)} frames, expected identity + header"
            )
            return
        ident, raw = frames
        try:
            msg = p.decode_up(raw)
        except Malformed as e:
            self._bad(ident, str(e))
            self._send_ctl(ident, p.Error(code="malformed", message=str(e)))
            return
        self._handle(ident, msg)

    def _handle(self, ident: bytes, msg: p.Hello | p.Credit | p.Bye) -> None:
        if isinstance(msg, p.Hello):
            if msg.credit < 0 or msg.credit > CREDIT_MAX:
                self._send_ctl(
                    ident, p.Error(code="bad-credit", message=f"credit {msg.credit} out of range")
                )
                return
            wanted = {key: UpstreamMark(*mark) for key, mark in msg.streams.items()}
            peer = _Peer(ident, msg.name, msg.conn, msg.prefixes or [""], msg.credit, wanted)
            self.peers[ident] = peer
            self._ever_peered = True
            self._owed.pop(msg.name, None)  # back: what it is owed is served again
            self._hello_names.add(msg.name)
            log.info(
                "%s: peer %s hello (connection %d, %d streams)",
                self.endpoint,
                printable(msg.name, 64),
                msg.conn,
                len(msg.streams),
            )
            self._update_peer_gauge()
            return
        known = self.peers.get(ident)
        if known is None or known.conn != msg.conn:
            if not isinstance(msg, p.Bye):
                self._send_ctl(ident, p.Reset(reason="unknown peer or connection: say hello"))
            return
        known.last_seen = time.monotonic()
        if isinstance(msg, p.Bye):
            self._drop(ident, "said bye")
            return
        if msg.n < 0 or msg.n > CREDIT_MAX:
            self._bad(ident, f"credit {msg.n} out of range")
            return
        known.credit += msg.n

    def _pump(self) -> None:
        now = time.monotonic()
        for ident, peer in list(self.peers.items()):
            if now - peer.last_seen > PEER_TIMEOUT_S:
                log.info("%s: peer %s timed out", self.endpoint, peer.name)
                self._drop(ident, f"timed out (silent for {PEER_TIMEOUT_S:.0f}s)")
                continue
            try:
                self._pump_peer(peer)
            except zmq.ZMQError as e:  # EHOSTUNREACH: the peer disconnected
                log.info("%s: peer %s unreachable (%s); dropped", self.endpoint, peer.name, e)
                self._drop(ident, f"unreachable ({e})")

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
            conn=peer.conn,
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
            except zmq.ZMQError as e:
                self._drop(ident, f"unreachable ({e})")

    def _send_ctl(self, ident: bytes, msg: p.Reset | p.Error) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._sock.send_multipart([ident, p.encode(msg)], zmq.NOBLOCK)

    def _bad(self, ident: bytes, why: str) -> None:
        self.malformed += 1
        if self.metrics is not None:
            self.metrics.malformed.labels("feed_server").inc()
        peer = ident.hex()[:12]
        why = printable(why, 300)
        self.badlog.event(
            self.endpoint,
            peer,
            why,
            f"{self.endpoint}: dropped malformed message from peer {peer}: {why}",
        )

    def _update_peer_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.peers.set(len(self.peers))
