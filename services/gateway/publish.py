"""The gateway's publishing side (XPUB): committed changes as seq-numbered updates, heartbeats.

``Publisher`` keeps, per topic, the lowest offset changed since the last publish
(``changed``) and the topic's ``SeqLog`` (seq + rewind log, ``query.py``). A commit runs in
two steps around ``Service.commit``:

1. ``plan()`` — assign a seq to every message the pending changes make (a change larger
   than ``UPDATE_MAX_RECORDS`` is several messages) and put the seq logs into the
   checkpoint state, so they are made durable *with* the records they describe;
2. ``publish(plan)`` — after the commit: send the messages (only committed records go out).

So after a restart the next seq is above every seq any consumer saw: a message lost in a
crash shows up as a gap, and the consumer resyncs. Heartbeats (``HEARTBEAT_INTERVAL_S``,
and right after a subscription arrives) carry the last seq of the topics that moved during
the last ``HEARTBEAT_WINDOW`` intervals, and every ``HEARTBEAT_FULL_EVERY``-th one of every
topic: their size follows the changes, not the topic count (840 topics: a full heartbeat
is ≈ 15 KB to every subscriber, a quiet one under 100 bytes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import zmq

from barstream.services.gateway import query
from barstream.shared import gateway_protocol as gp
from barstream.shared.metrics import GatewayMetrics
from barstream.shared.storeset import StoreSet

#: Checkpoint state key holding every topic's SeqLog.
STATE_KEY: Final = "gateway_seqs"

#: The messages of one commit: (key, seq, start, stop, end) each.
Plan = list[tuple[str, int, int, int, int]]


class Publisher:
    """Publish a StoreSet's committed changes on ``pub`` (see the module docstring)."""

    def __init__(
        self,
        pub: zmq.Socket[bytes],
        stores: StoreSet,
        metrics: GatewayMetrics,
        log: logging.Logger,
    ) -> None:
        self.pub = pub
        self.stores = stores
        self.gmetrics = metrics
        self.log = log
        #: Random per process: a consumer that sees it change knows the gateway restarted.
        self.instance = secrets.token_hex(8)
        self.seqlogs: dict[str, query.SeqLog] = self._load_seqlogs()
        # The checkpoint's copy of the seqlogs, kept up to date per changed topic (rebuilding
        # every topic's entry on each commit would cost time in proportion to all topics).
        self._seq_state: dict[str, list[int]] = {k: v.to_json() for k, v in self.seqlogs.items()}
        self._changed: dict[str, int] = {}  # lowest offset changed since the last publish
        self._published_end = {k: s.committed_length for k, s in stores.stores.items()}
        self._closed_end = {k: query.closed_end(s.records) for k, s in stores.stores.items()}
        self.subscriptions = 0
        self.published = 0
        self._hb_soon = False
        self._hb_wake = asyncio.Event()
        self.heartbeats_sent = 0  # this instance's heartbeat count (the next is +1)
        #: topic → the heartbeat count when its seq last moved (pruned past the window)
        self._moved_at: dict[str, int] = {}

    def topic(self, key: str) -> None:
        """``key`` is served (a new store): give it a seq log."""
        if key not in self.seqlogs:
            self.seqlogs[key] = query.SeqLog()

    def changed(self, key: str, first: int) -> None:
        self._changed[key] = min(self._changed.get(key, first), first)

    def plan(self) -> Plan:
        """Step 1, before the commit: assign seqs to the pending changes; the seq logs go
        into the checkpoint state with them."""
        plan: Plan = []
        for key, start in self._changed.items():
            store = self.stores.stores[key]
            log = self.seqlogs[key]
            end = store.length
            previous_end = self._published_end.get(key, 0)
            for a, b in query.split(start, end, gp.UPDATE_MAX_RECORDS):
                plan.append((key, log.record(a, previous_end), a, b, end))
        for key in self._changed:
            self._seq_state[key] = self.seqlogs[key].to_json()
        self.stores.state[STATE_KEY] = self._seq_state
        return plan

    def publish(self, plan: Plan) -> None:
        """Step 2, after the commit: send the planned messages."""
        changed, self._changed = self._changed, {}
        for key, start in changed.items():
            store = self.stores.stores[key]
            ce = self._closed_end.get(key, 0)
            if ce >= start:
                ce = query.closed_end(store.view(start, store.length), start)
            self._closed_end[key] = ce
            self._published_end[key] = store.length
        wall_ms = int(time.time() * 1000)
        for key, seq, a, b, end in plan:
            self._send_update(key, seq, a, b, end, wall_ms)
            self._moved_at[key] = self.heartbeats_sent

    def _send_update(
        self, key: str, seq: int, start: int, stop: int, end: int, wall_ms: int
    ) -> None:
        store = self.stores.stores[key]
        header = gp.Update(
            epoch=store.store_id.hex(),
            seq=seq,
            start=start,
            count=stop - start,
            end=end,
            closed_end=self._closed_end[key],
            wall_ms=wall_ms,
        )
        # copy=True: zmq owns a copy, so a later rewrite of the mapping cannot change bytes in flight.
        self.pub.send_multipart(
            [key.encode(), gp.encode(header), store.view(start, stop).data], copy=True
        )
        self.published += 1
        self.gmetrics.publishes.inc()
        self.gmetrics.records_published.inc(stop - start)

    # -- subscriptions and heartbeats ---------------------------------------------------

    def on_subscription(self, frames: list[bytes]) -> None:
        """An XPUB (un)subscription message: count it; a subscription gets a heartbeat."""
        if len(frames) != 1 or not frames[0]:
            return
        if frames[0][0] == 1:
            self.subscriptions += 1
            self._hb_soon = True  # a heartbeat now proves the subscription is active
            self._hb_wake.set()
        elif frames[0][0] == 0:
            self.subscriptions = max(0, self.subscriptions - 1)
        self.gmetrics.subscriptions.set(self.subscriptions)

    async def heartbeats(self, each: Callable[[], None]) -> None:
        """Heartbeat every HEARTBEAT_INTERVAL_S and soon after a subscription; ``each``
        runs with every heartbeat."""
        while True:
            self._send_heartbeat()
            each()
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as
            # the event is set (a subscription flood at stop): the task then never ended and
            # the gateway ignored SIGTERM (tests/hostile/test_socket_fuzz.py found it).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(gp.HEARTBEAT_INTERVAL_S):
                    await self._hb_wake.wait()
            self._hb_wake.clear()
            if self._hb_soon:
                await asyncio.sleep(0.002)  # coalesce a burst of subscriptions

    def heartbeat(self) -> gp.Heartbeat:
        """The next heartbeat: the seqs of the topics that moved within the window (a
        publish since heartbeat ``n - HEARTBEAT_WINDOW``), or of all topics when full."""
        self.heartbeats_sent += 1
        n = self.heartbeats_sent
        full = n % gp.HEARTBEAT_FULL_EVERY == 1
        oldest = n - gp.HEARTBEAT_WINDOW
        if full:
            seqs = {k: log.seq for k, log in self.seqlogs.items()}
        else:
            seqs = {k: self.seqlogs[k].seq for k, at in self._moved_at.items() if at >= oldest}
        self._moved_at = {k: at for k, at in self._moved_at.items() if at > oldest}
        return gp.Heartbeat(
            instance=self.instance,
            wall_ms=int(time.time() * 1000),
            interval_ms=int(gp.HEARTBEAT_INTERVAL_S * 1000),
            seqs=seqs,
            hb=n,
            window=0 if full else gp.HEARTBEAT_WINDOW,
        )

    def _send_heartbeat(self) -> None:
        self._hb_soon = False
        hb = self.heartbeat()
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart([gp.HEARTBEAT_TOPIC, gp.encode(hb)], zmq.NOBLOCK)

    def _load_seqlogs(self) -> dict[str, query.SeqLog]:
        raw = self.stores.state.get(STATE_KEY, {})
        logs: dict[str, query.SeqLog] = {}
        if not isinstance(raw, dict):
            self.log.error("checkpoint state %s is not a map; sequence numbers restart", STATE_KEY)
            return logs
        for key, value in raw.items():
            try:
                logs[str(key)] = query.SeqLog.from_json(value)
            except ValueError as e:
                self.log.error("checkpoint state %s[%s]: %s; seq restarts at 0", STATE_KEY, key, e)
        for key in self.stores.stores:
            logs.setdefault(key, query.SeqLog())
        return logs
