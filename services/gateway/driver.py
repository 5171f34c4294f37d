"""The socket side of following topics: one SUB + DEALER pair and its followers, never blocking.

``Driver.pump()`` reads what the SUB (updates, heartbeats) and the DEALER (snapshot
replies) hold, routes each decoded message to its topic's ``Follower`` (``follower.py``),
sends the snapshot requests the followers need once a heartbeat proved the subscriptions
active, and reconnects — both sockets, every follower resyncing — when the gateway is
silent for ``HEARTBEAT_TIMEOUT_S``, sends no heartbeat after connecting, or leaves a
request unanswered for ``REQUEST_TIMEOUT_S``. A heartbeat with a new ``instance`` (a
restarted gateway) asks again what was in flight. A heartbeat names only the topics that
moved lately (``seqs``, over ``window`` intervals; all of them when ``window`` is 0); one
whose count ``hb`` jumps by more than ``window`` since the last one seen means heartbeats
were lost, and every live follower resyncs. The sync and asyncio clients
(``client.py``) differ only in how they wait between pumps (``timeout_s()`` says how long).
"""

from __future__ import annotations

import logging
import time
from typing import Final

import numpy as np
import zmq

from barstream.services.gateway.follower import BarUpdate, Follower
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import GatewayError, Malformed
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE
from barstream.shared.sockets import read_ready_frames

log = logging.getLogger("barstream.gateway.client")

#: A request unanswered for this long: reconnect and ask again.
REQUEST_TIMEOUT_S: Final = 10.0
#: Messages read from each socket per pump.
PUMP_MAX: Final = 1000


class Driver:
    """Sockets and followers of one stream; ``pump()`` never blocks."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        publish: str,
        requests: str,
        followers: list[Follower],
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
        self.last_hb = 0  # the instance's heartbeat count we saw last (0: none yet)
        self.resyncs = 0
        self.reconnects = 0
        self.gaps = 0
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
        self.last_hb = 0  # a new connection: heartbeats lost meanwhile are not a gap here
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
        for frames in read_ready_frames(self.sub, PUMP_MAX):
            self.last_rx = time.monotonic()
            out += self._on_publication(frames)
        for frames in read_ready_frames(self.dealer, PUMP_MAX):
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

    def _ask(self, f: Follower, now: float) -> None:
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
        except Malformed as e:
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
            restarted = self.instance != msg.instance
            self.instance = msg.instance
            missed = (
                not restarted
                and msg.window > 0
                and self.last_hb > 0
                and msg.hb - self.last_hb > msg.window
            )
            lost = msg.hb - self.last_hb - 1
            self.last_hb = msg.hb
            for name, f in self.followers.items():
                before = f.state
                if missed:  # what the lost heartbeats said is unknown: ask again
                    f.on_missed_heartbeats(lost)
                elif msg.window == 0 or name in msg.seqs:
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
        except Malformed as e:
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
        return f.on_reply(reply, records)
