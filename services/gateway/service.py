"""The gateway service: replica stores of every bar it serves, fed by the resampler's feed,
served to consumers over the protocol in ``shared/gateway_protocol.py``.

Wiring::

    resampler feed ──FeedClient──▶ apply "from X the store now reads R" (Store.replace_from)
                                   │  commit (on idle / every commit_interval_s)
                                   ▼
                         publish the committed change per topic (XPUB, seq +1 per message)
    consumers ──ROUTER──▶ history / snapshot / list / status (pure core in query.py)

Invariants:
- only committed records are published or served (a crash never un-says a message);
- a topic's ``seq`` and its rewind log (``query.SeqLog``) are written into the same
  checkpoint as the records they describe, *before* the messages go out, so after a
  restart the next seq is above every seq any consumer saw: a message lost in a crash
  shows up as a gap, and the consumer resyncs;
- ``epoch`` (the replica store's id) changes only when the gateway's store is rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import Final

import numpy as np
import zmq
from prometheus_client import Counter, Gauge

from barstream.services.gateway import query
from barstream.shared import gateway_protocol as gp
from barstream.shared import protocol as feed_protocol
from barstream.shared.config import Config
from barstream.shared.feed import DRAIN_MAX, Wakeup
from barstream.shared.header import StoreMeta
from barstream.shared.metrics import PREFIX
from barstream.shared.record import KIND_BARS
from barstream.shared.service import Change, Changes, Service

#: Request peers seen within this many seconds count as connected consumers.
CONSUMER_TTL_S: Final = 60.0
#: Checkpoint state key holding every topic's SeqLog.
STATE_KEY: Final = "gateway_seqs"
#: Replies queued per request peer before the gateway drops further replies to it.
REPLY_HWM: Final = 1000


class GatewayMetrics:
    """Gateway-specific metrics, on the service's registry (base units, ``_total`` counters)."""

    def __init__(self, service: Service) -> None:
        r = service.metrics.registry
        self.consumers = Gauge(
            PREFIX + "gateway_consumers",
            f"Distinct request peers seen in the last {CONSUMER_TTL_S:.0f}s (an estimate).",
            registry=r,
        )
        self.subscriptions = Gauge(
            PREFIX + "gateway_subscriptions",
            "zmq subscriptions on the publish socket (subscribe minus unsubscribe messages).",
            registry=r,
        )
        self.requests = Counter(
            PREFIX + "gateway_requests", "Requests answered, by kind.", ["kind"], registry=r
        )
        self.errors = Counter(
            PREFIX + "gateway_request_errors",
            "Requests refused, by error code.",
            ["code"],
            registry=r,
        )
        self.publishes = Counter(
            PREFIX + "gateway_updates_published", "Update messages published.", registry=r
        )
        self.records_published = Counter(
            PREFIX + "gateway_records_published", "Records in published updates.", registry=r
        )
        self.gaps = Counter(
            PREFIX + "gateway_resyncs",
            "Resync requests (snapshot with since_seq): consumers that saw a sequence gap.",
            registry=r,
        )
        self.replies_dropped = Counter(
            PREFIX + "gateway_replies_dropped",
            "Replies dropped (peer gone or over its queue bound).",
            registry=r,
        )


class Gateway(Service):
    """Replicate the resampler's bar stores; publish committed changes; answer requests."""

    name = "gateway"
    #: ``--publish-hwm N`` from the command line; overrides ``gateway.publish_hwm``.
    publish_hwm_override: int | None = None

    @classmethod
    def take_options(cls, argv: list[str]) -> list[str]:
        """Read the gateway's own command-line options (``--publish-hwm N``: per-consumer
        queue bound, overriding ``gateway.publish_hwm``); return the rest for
        ``shared.service.main``."""
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--publish-hwm", type=int, default=None)
        args, rest = parser.parse_known_args(argv)
        if args.publish_hwm is not None and args.publish_hwm < 1:
            parser.error(f"--publish-hwm {args.publish_hwm}: must be >= 1")
        cls.publish_hwm_override = args.publish_hwm
        return rest

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        self.gw = config.gateway
        #: Messages queued per consumer before the publish socket drops.
        self.publish_hwm = self.publish_hwm_override or config.gateway.publish_hwm
        # Every configured topic is served from the start (empty until bars arrive), so a
        # consumer may subscribe before the first bar of a new symbol exists.
        for symbol, side in config.streams():
            for tf in ("1m", *config.resampler.timeframes):
                self.stores.ensure(StoreMeta(symbol, side, tf))
        self.instance = secrets.token_hex(8)
        self.gmetrics = GatewayMetrics(self)
        self.seqlogs: dict[str, query.SeqLog] = self._load_seqlogs()
        # The checkpoint's copy of the seqlogs, kept up to date per changed topic (rebuilding
        # every topic's entry on each commit would cost time in proportion to all topics).
        self._seq_state: dict[str, list[int]] = {k: v.to_json() for k, v in self.seqlogs.items()}
        self._changed: dict[str, int] = {}  # lowest offset changed since the last publish
        self._published_end = {k: s.committed_length for k, s in self.stores.stores.items()}
        self._closed_end = {k: query.closed_end(s.records) for k, s in self.stores.stores.items()}
        self._peers: dict[bytes, float] = {}
        self._subscriptions = 0
        self._hb_soon = False
        self.published = 0
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.pub: zmq.Socket[bytes] = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, self.publish_hwm)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription: counts consumers
        self.pub.bind(self.gw.publish)
        self.router: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, gp.MAX_REQUEST_BYTES + 4096)
        self.router.setsockopt(zmq.SNDHWM, REPLY_HWM)
        self.router.setsockopt(zmq.RCVHWM, 10_000)
        self.router.bind(self.gw.requests)
        self._hb_wake: asyncio.Event | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def main(self) -> None:
        if self.stores.pending():
            # Stores just created (a first start, a new topic): commit them before serving,
            # so the ids consumers see as epochs survive a crash (else "store rebuilt").
            self.commit()
        self.follow_upstream()
        assert self.upstream is not None
        self._hb_wake = asyncio.Event()
        self.log.info(
            "publishing on %s, requests on %s, upstream %s",
            self.gw.publish,
            self.gw.requests,
            self.endpoints.upstream,
        )
        follow = asyncio.create_task(self.upstream.run(until_caught_up=self.drain))
        serving = [
            asyncio.create_task(self._serve(self.router, self._on_request)),
            asyncio.create_task(self._serve(self.pub, self._on_subscription)),
            asyncio.create_task(self._heartbeats()),
        ]
        try:
            if self.drain:
                await follow
                self.maybe_commit(idle=True)
            else:
                await self.serve_until_stopped(follow, *serving)
        finally:
            for t in (follow, *serving):
                t.cancel()
            for t in (follow, *serving):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def close(self) -> None:
        try:
            await super().close()  # commits (and so publishes) what is pending
        finally:
            self.pub.close(linger=0)
            self.router.close(linger=0)

    # -- upstream -> replica stores -----------------------------------------------------

    def handle(
        self, batch: feed_protocol.Batch, records: np.ndarray, attachments: list[bytes]
    ) -> Changes:
        """From offset ``batch.start`` on, the resampler's store now reads ``records``: so
        does the replica (rewritten only from the first record that differs)."""
        if batch.kind != KIND_BARS:
            self._count_error("upstream-kind")
            self.log.error(
                "upstream stream %s holds kind %d, not bars; ignored", batch.stream, batch.kind
            )
            return ()
        try:
            meta = StoreMeta.from_key(batch.stream)
        except ValueError as e:
            self._count_error("upstream-key")
            self.log.error("upstream stream name refused: %s; ignored", e)
            return ()
        key = self.stores.ensure(meta).meta.key
        if key not in self.seqlogs:
            self.seqlogs[key] = query.SeqLog()
        return (Change(key, batch.start, (records,), diff=True),)

    def changed(self, key: str, first: int) -> None:
        self._changed[key] = min(self._changed.get(key, first), first)

    def commit(self) -> None:
        """Assign seqs to the pending changes, commit them with the records, then publish."""
        plan: list[tuple[str, int, int, int, int]] = []  # key, seq, start, stop, end
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
        super().commit()
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
            self._publish(key, seq, a, b, end, wall_ms)

    def _publish(self, key: str, seq: int, start: int, stop: int, end: int, wall_ms: int) -> None:
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

    # -- consumers ----------------------------------------------------------------------

    async def _serve(self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None]) -> None:
        """Drain ``sock`` on every wake-up (FD, timer); handle each message; never stop on one."""
        wake = Wakeup(sock)
        try:
            while True:
                for _ in range(DRAIN_MAX):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    handle(frames)
                events = sock.getsockopt(zmq.EVENTS)
                assert isinstance(events, int)
                if events & zmq.POLLIN:
                    await asyncio.sleep(0)
                    continue
                await wake.wait(gp.HEARTBEAT_INTERVAL_S)
        finally:
            wake.close()

    def _on_subscription(self, frames: list[bytes]) -> None:
        if len(frames) != 1 or not frames[0]:
            return
        if frames[0][0] == 1:
            self._subscriptions += 1
            self._hb_soon = True  # a heartbeat now proves the subscription is active
            if self._hb_wake is not None:
                self._hb_wake.set()
        elif frames[0][0] == 0:
            self._subscriptions = max(0, self._subscriptions - 1)
        self.gmetrics.subscriptions.set(self._subscriptions)

    async def _heartbeats(self) -> None:
        assert self._hb_wake is not None
        while True:
            self._send_heartbeat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hb_wake.wait(), gp.HEARTBEAT_INTERVAL_S)
            self._hb_wake.clear()
            if self._hb_soon:
                await asyncio.sleep(0.002)  # coalesce a burst of subscriptions

    def _send_heartbeat(self) -> None:
        self._hb_soon = False
        hb = gp.Heartbeat(
            instance=self.instance,
            wall_ms=int(time.time() * 1000),
            interval_ms=int(gp.HEARTBEAT_INTERVAL_S * 1000),
            seqs={k: log.seq for k, log in self.seqlogs.items()},
        )
        with contextlib.suppress(zmq.Again):
            self.pub.send_multipart([gp.HEARTBEAT_TOPIC, gp.encode(hb)], zmq.NOBLOCK)
        now = time.monotonic()
        self._peers = {k: t for k, t in self._peers.items() if now - t < CONSUMER_TTL_S}
        self.gmetrics.consumers.set(len(self._peers))

    def _on_request(self, frames: list[bytes]) -> None:
        ident, rest = frames[0], frames[1:]
        self._peers[ident] = time.monotonic()
        envelope: list[bytes] = []
        if len(rest) == 2 and rest[0] == b"":
            envelope, rest = [b""], rest[1:]  # a REQ peer's delimiter
        request_id = 0
        try:
            if len(rest) != 1:
                raise gp.Malformed(
                    "bad-frames",
                    f"{len(rest)} frames after the identity; a request is one header frame "
                    "(DEALER) or an empty delimiter and one header frame (REQ)",
                )
            req = gp.decode_request(rest[0])
            request_id = req.id
            reply, data = self._answer(req)
        except gp.Malformed as e:
            reply, data = gp.Error(id=e.request_id, code=e.code, message=str(e)), None
        except query.QueryError as e:
            reply, data = gp.Error(id=request_id, code=e.code, message=str(e)), None
        except Exception as e:  # a bug must not stop the gateway serving everyone else
            self.log.exception("request from %s failed", ident.hex()[:12])
            reply = gp.Error(id=request_id, code="internal", message=f"internal error: {e!r}")
            data = None
        if isinstance(reply, gp.Error):
            self._count_error(reply.code)
            self.log.warning(
                "refused request %d from peer %s: %s: %s",
                reply.id,
                ident.hex()[:12],
                reply.code,
                reply.message,
            )
        out: list[bytes | memoryview] = [ident, *envelope, gp.encode(reply)]
        if data is not None:
            out.append(data)
        try:
            self.router.send_multipart(out, zmq.NOBLOCK, copy=True)
        except zmq.ZMQError:
            self.gmetrics.replies_dropped.inc()

    def _answer(self, req: gp.Request) -> tuple[gp.Reply, memoryview | None]:
        if isinstance(req, gp.StatusRequest):
            self._count_request("status")
            return self._status(req.id), None
        if isinstance(req, gp.ListTopics):
            self._count_request("list")
            return self._listing(req), None
        store = self.stores.get(req.topic)
        if store is None:
            hint = "" if gp.valid_topic(req.topic) else " (topics look like EUR-USD/BID/1h)"
            raise query.QueryError(
                "unknown-topic",
                f"topic {req.topic!r} is not served here{hint}; the list request names every topic",
            )
        length = store.stable_length
        log = self.seqlogs.get(req.topic) or query.SeqLog()
        if isinstance(req, gp.History):
            self._count_request("history")
            for name in ("start_ms", "end_ms", "last"):
                value = getattr(req, name)
                if value is not None and not -(2**63) <= value < 2**63:
                    raise query.QueryError("invalid-field", f"{name} {value} is not an int64")
            times = store.view(0, length)["ts_ms"]
            span = query.resolve_history(req, times, self.gw.max_request_records)
        else:
            self._count_request("snapshot")
            if req.since_seq >= 0:
                self.gmetrics.gaps.inc()
            span = query.resolve_snapshot(
                req, length, store.store_id.hex(), log, self.gw.max_request_records
            )
        reply = gp.Records(
            id=req.id,
            topic=req.topic,
            epoch=store.store_id.hex(),
            seq=log.seq,
            start=span.start,
            count=span.stop - span.start,
            end=length,
            more=span.more,
        )
        return reply, store.view(span.start, span.stop).data

    def _listing(self, req: gp.ListTopics) -> gp.Listing:
        topics = []
        for key, store in sorted(self.stores.stores.items()):
            if not key.startswith(req.prefix):
                continue
            n = store.stable_length
            times = store.view(0, n)["ts_ms"]
            topics.append(
                gp.TopicInfo(
                    topic=key,
                    epoch=store.store_id.hex(),
                    seq=self.seqlogs[key].seq if key in self.seqlogs else 0,
                    count=n,
                    first_ms=int(times[0]) if n else None,
                    last_ms=int(times[-1]) if n else None,
                )
            )
        return gp.Listing(id=req.id, topics=topics)

    def _status(self, request_id: int) -> gp.Status:
        up = self.upstream
        ends = up.upstream_ends if up is not None else {}
        topics = {}
        for key, store in sorted(self.stores.stores.items()):
            pos = self.stores.upstream.get(key)
            end = ends[key][0] if key in ends else -1
            topics[key] = gp.TopicStatus(
                length=store.committed_length,
                seq=self.seqlogs[key].seq if key in self.seqlogs else 0,
                upstream_end=end,
                lag_records=max(0, end - (pos.offset if pos else 0)) if end >= 0 else 0,
            )
        age = -1.0
        if up is not None and up._last_rx:  # the only liveness clock FeedClient keeps
            age = time.monotonic() - up._last_rx
        return gp.Status(
            id=request_id,
            instance=self.instance,
            wall_ms=int(time.time() * 1000),
            upstream=self.endpoints.upstream,
            upstream_age_s=round(age, 3),
            topics=topics,
            consumers=len(self._peers),
            subscriptions=self._subscriptions,
            requests=dict(self.requests),
            errors=dict(self.errors),
            published=self.published,
        )

    # -- helpers ------------------------------------------------------------------------

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

    def _count_request(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1
        self.gmetrics.requests.labels(kind).inc()

    def _count_error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        self.gmetrics.errors.labels(code).inc()
        self.metrics.errors.labels(code).inc()

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"{base} published={self.published} consumers={len(self._peers)}>"
