"""The gateway service: replica stores of every bar it serves, fed by the resampler's feed,
served to consumers over the protocol in ``shared/gateway_protocol.py``.

Wiring::

    resampler feed ──FeedClient──▶ handle: "from X the store now reads R" (Service.apply)
                                   │  commit (on idle / every commit_interval_s)
                                   ▼
              publish.py: the committed change per topic (XPUB, seq +1 per message)
    consumers ──ROUTER──▶ dispatch.py: history / snapshot / list / status (pure core query.py)

Invariants:
- only committed records are published or served (a crash never un-says a message);
- a topic's ``seq`` and its rewind log (``query.SeqLog``) are written into the same
  checkpoint as the records they describe, *before* the messages go out (``commit``), so
  after a restart the next seq is above every seq any consumer saw: a message lost in a
  crash shows up as a gap, and the consumer resyncs;
- ``epoch`` (the replica store's id) changes only when the gateway's store is rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Final

import numpy as np
import zmq

from barstream.services.features.layout import feature_records_problem
from barstream.services.features.service import feature_keys
from barstream.services.gateway.dispatch import Dispatcher
from barstream.services.gateway.publish import Publisher
from barstream.services.resampler.service import served_timeframes
from barstream.shared import gateway_protocol as gp
from barstream.shared import protocol as feed_protocol
from barstream.shared import sockets
from barstream.shared.config import FEATURES_FOLLOWER, Config
from barstream.shared.errors import UpstreamInvalid
from barstream.shared.feed_client import FeedClient
from barstream.shared.header import StoreMeta
from barstream.shared.inbound import bars_problem
from barstream.shared.metrics import GatewayMetrics
from barstream.shared.names import RejectedName, StreamNames, printable
from barstream.shared.record import KIND_BARS, KIND_FEATURES
from barstream.shared.service import Change, Changes, Service

#: Replies queued per request peer before the gateway drops further replies to it.
REPLY_HWM: Final = 1000
#: Requests queued per peer before zmq stops reading that peer's connection (a consumer
#: has one or a few in flight; a flood of 64 KiB requests must not queue 640 MB).
REQUEST_HWM: Final = 1000


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
        #: feature store key → its set: the features stage's stores (bars joined with their
        #: features, docs/FORMAT.md §11), followed from its feed when sets are configured.
        self.feature_sets = feature_keys(config)
        for key in self.feature_sets:
            self.stores.ensure(StoreMeta.from_key(key, kind=KIND_FEATURES))
        self.features_upstream: FeedClient | None = None
        self.gmetrics = GatewayMetrics(self.metrics)
        self.pub: zmq.Socket[bytes] = self.ctx.socket(zmq.XPUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, self.publish_hwm)
        self.pub.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription: counts consumers
        sockets.bind(self.pub, self.gw.publish, "gateway.publish")
        self.router: zmq.Socket[bytes] = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, gp.MAX_REQUEST_BYTES + 4096)
        self.router.setsockopt(zmq.SNDHWM, REPLY_HWM)
        self.router.setsockopt(zmq.RCVHWM, REQUEST_HWM)
        sockets.bind(self.router, self.gw.requests, "gateway.requests")
        self.publisher = Publisher(self.pub, self.stores, self.gmetrics, self.log)
        self.dispatch = Dispatcher(
            self.router,
            self.stores,
            self.publisher,
            self.gw,
            self.metrics,
            self.gmetrics,
            self.log,
            upstream_endpoint=self.endpoints.upstream,
            upstream=lambda: self.upstream,
            feature_sets=self.feature_sets,
        )

    def take_names(self) -> StreamNames:
        """The resampler's stores of the configured symbols and sides: 1m and every
        timeframe its cascade makes (the configured ones and the steps they need)."""
        p_cfg = self.config.pipeline
        return StreamNames(p_cfg.symbols, p_cfg.sides, served_timeframes(self.config))

    # -- lifecycle ----------------------------------------------------------------------

    async def main(self) -> None:
        if self.stores.pending():
            # Stores just created (a first start, a new topic): commit them before serving,
            # so the ids consumers see as epochs survive a crash (else "store rebuilt").
            self.commit()
        self.follow_upstream()
        assert self.upstream is not None
        follows = [asyncio.create_task(self.upstream.run(until_caught_up=self.drain))]
        if self.feature_sets:
            self.features_upstream = self._follow_features()
            follows.append(
                asyncio.create_task(self.features_upstream.run(until_caught_up=self.drain))
            )
        self.log.info(
            "publishing on %s, requests on %s, upstream %s",
            self.gw.publish,
            self.gw.requests,
            self.endpoints.upstream,
        )
        hb_s = gp.HEARTBEAT_INTERVAL_S
        serving = [
            asyncio.create_task(
                sockets.serve(self.router, self.dispatch.on_request, timeout_s=hb_s)
            ),
            asyncio.create_task(
                sockets.serve(self.pub, self.publisher.on_subscription, timeout_s=hb_s)
            ),
            asyncio.create_task(self.publisher.heartbeats(self.dispatch.forget_idle_consumers)),
        ]
        try:
            if self.drain:
                await asyncio.gather(*follows)
                self.maybe_commit(idle=True)
            else:
                await self.serve_until_stopped(*follows, *serving)
        finally:
            for t in (*follows, *serving):
                t.cancel()
            for t in (*follows, *serving):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def _follow_features(self) -> FeedClient:
        """The client of the features stage's feed: its stores go through ``handle`` too."""
        upstream = self.upstream
        assert upstream is not None
        p_cfg = self.config.pipeline
        names = StreamNames(
            p_cfg.symbols, p_cfg.sides, {key.split("/")[2] for key in self.feature_sets}
        )
        return FeedClient(
            self.ctx,
            self.gw.features_upstream,
            self.stores.upstream,  # its keys are not the resampler's: one map holds both
            upstream.handler,
            name=FEATURES_FOLLOWER,
            metrics=self.metrics,
            on_idle=self.idle,
            names=names,
        )

    def stop(self) -> None:
        super().stop()
        if self.features_upstream is not None:
            self.features_upstream.close()

    async def close(self) -> None:
        try:
            if self.features_upstream is not None:
                self.features_upstream.close()
            await super().close()  # commits (and so publishes) what is pending
        finally:
            self.pub.close(linger=0)
            self.router.close(linger=0)

    # -- upstream -> replica stores -> publish ------------------------------------------

    def handle(
        self, batch: feed_protocol.Batch, records: np.ndarray, attachments: list[bytes]
    ) -> Changes:
        """From offset ``batch.start`` on, the resampler's (or the features stage's) store
        now reads ``records``: so does the replica (rewritten only from the first record
        that differs)."""
        if batch.kind == KIND_FEATURES and batch.stream in self.feature_sets:
            return self._handle_features(batch, records)
        if batch.kind != KIND_BARS:
            self.dispatch.count_error("upstream-kind")
            stream = printable(batch.stream)
            self.rejectlog.event(
                "",
                f"upstream stream {stream}",
                f"kind {batch.kind}",
                f"upstream stream {stream} holds kind {batch.kind}, not bars; ignored",
            )
            return ()
        try:
            meta = self.upstream_names.check(batch.stream)
        except RejectedName as e:
            self.metrics.rejected.labels("feed_client", e.reason).inc()
            self.dispatch.count_error("upstream-key")
            self.rejectlog.event(
                "", "upstream names", str(e), f"upstream stream name refused: {e}; ignored"
            )
            return ()
        store = self.stores.ensure(meta)
        key = store.meta.key
        before = store.view(
            max(0, min(batch.start, store.length) - 1), min(batch.start, store.length)
        )
        why = (
            f"starts at {batch.start}, past the replica's end {store.length}"
            if batch.start > store.length
            else bars_problem(before, records)
        )
        if why is not None:
            self.metrics.rejected.labels("feed_client", "bad-records").inc()
            self.dispatch.count_error("upstream-records")
            self.reject(batch, UpstreamInvalid(why, stream=batch.stream, offset=batch.start))
            return ()
        self.publisher.topic(key)
        return (Change(key, batch.start, (records,), diff=True),)

    def _handle_features(self, batch: feed_protocol.Batch, records: np.ndarray) -> Changes:
        """A batch of a feature store: each bar record keeps the bar invariants, each
        feature record is the group its offset says, written for the configured set."""
        fs = self.feature_sets[batch.stream]
        store = self.stores.ensure(StoreMeta.from_key(batch.stream, kind=KIND_FEATURES))
        why = feature_records_problem(fs, store.records, batch.start, records)
        if why is not None:
            self.metrics.rejected.labels("feed_client", "bad-records").inc()
            self.dispatch.count_error("upstream-records")
            self.reject(batch, UpstreamInvalid(why, stream=batch.stream, offset=batch.start))
            return ()
        self.publisher.topic(batch.stream)
        return (Change(batch.stream, batch.start, (records,), diff=True),)

    def changed(self, key: str, first: int) -> None:
        self.publisher.changed(key, first)

    def commit(self) -> None:
        """Assign seqs to the pending changes, commit them with the records, then publish."""
        plan = self.publisher.plan()
        super().commit()
        self.publisher.publish(plan)

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return f"{base} published={self.publisher.published} consumers={len(self.dispatch.peers)}>"
