"""The gateway's request side (ROUTER): history / snapshot / list / status answers.

``Dispatcher.on_request`` takes one message from the ROUTER socket (identity, optional REQ
delimiter, one header frame), answers it with exactly one reply, and never stops serving:
a malformed request (``Malformed``), a refused one (``GatewayError`` from the pure core,
``query.py``) and a bug (``internal``) all get an error reply naming what was wrong, and
are counted. Only committed records (``Store.stable_length``) are served. It also keeps
the counters the status reply reports (requests, errors, consumers).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import zmq

from barstream.services.gateway import query
from barstream.services.gateway.publish import Publisher
from barstream.shared import gateway_protocol as gp
from barstream.shared.config import GatewayConfig
from barstream.shared.errors import GatewayError, Malformed
from barstream.shared.feed_client import FeedClient
from barstream.shared.metrics import GatewayMetrics, Metrics
from barstream.shared.names import printable
from barstream.shared.ratelog import RateLimitedLog
from barstream.shared.storeset import StoreSet

if TYPE_CHECKING:
    from barstream.services.features.spec import FeatureSet


class Dispatcher:
    """Answer consumers' requests on ``router`` from ``stores`` (see the module docstring)."""

    def __init__(
        self,
        router: zmq.Socket[bytes],
        stores: StoreSet,
        publisher: Publisher,
        settings: GatewayConfig,
        metrics: Metrics,
        gmetrics: GatewayMetrics,
        log: logging.Logger,
        *,
        upstream_endpoint: str,
        upstream: Callable[[], FeedClient | None],
        feature_sets: Mapping[str, FeatureSet] | None = None,
    ) -> None:
        self.router = router
        self.stores = stores
        self.publisher = publisher
        self.settings = settings
        self.metrics = metrics
        self.gmetrics = gmetrics
        self.log = log
        self.upstream_endpoint = upstream_endpoint
        #: feature topic → its set (listed with the topic: a client decodes by it)
        self.feature_infos = {
            key: gp.FeatureInfo(fs.name, list(fs.columns), list(fs.outputs), fs.n_groups, fs.crc)
            for key, fs in (feature_sets or {}).items()
        }
        self.upstream = upstream
        self.peers: dict[bytes, float] = {}  # request peer → when last seen
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        #: Refusals: all counted; logged first per peer, then summarised (ratelog.py).
        self.refusals = RateLimitedLog(log, "refused requests")

    def on_request(self, frames: list[bytes]) -> None:
        ident, rest = frames[0], frames[1:]
        self.peers[ident] = time.monotonic()
        envelope: list[bytes] = []
        if len(rest) == 2 and rest[0] == b"":
            envelope, rest = [b""], rest[1:]  # a REQ peer's delimiter
        request_id = 0
        try:
            if len(rest) != 1:
                raise Malformed(
                    f"{len(rest)} frames after the identity; a request is one header frame "
                    "(DEALER) or an empty delimiter and one header frame (REQ)",
                    code="bad-frames",
                )
            req = gp.decode_request(rest[0])
            request_id = req.id
            reply, data = self._answer(req)
        except Malformed as e:
            reply, data = gp.Error(id=e.request_id, code=e.code, message=e.reason), None
        except GatewayError as e:
            reply, data = gp.Error(id=request_id, code=e.code, message=e.reason), None
        except Exception as e:  # a bug must not stop the gateway serving everyone else
            self.log.exception("request from %s failed", ident.hex()[:12])
            reply = gp.Error(id=request_id, code="internal", message=f"internal error: {e!r}")
            data = None
        if isinstance(reply, gp.Error):
            self.count_error(reply.code)
            peer = ident.hex()[:12]
            why = printable(f"{reply.code}: {reply.message}", 300)
            self.refusals.event(
                "", peer, why, f"refused request {reply.id} from peer {peer}: {why}"
            )
        out: list[bytes | memoryview] = [ident, *envelope, gp.encode(reply)]
        if data is not None:
            out.append(data)
        try:
            self.router.send_multipart(out, zmq.NOBLOCK, copy=True)
        except zmq.ZMQError:
            self.gmetrics.replies_dropped.inc()

    def forget_idle_consumers(self) -> None:
        """Request peers not seen for CONSUMER_TTL_S no longer count as consumers."""
        self.refusals.flush()
        now = time.monotonic()
        self.peers = {k: t for k, t in self.peers.items() if now - t < gp.CONSUMER_TTL_S}
        self.gmetrics.consumers.set(len(self.peers))

    def count_error(self, code: str) -> None:
        """A refusal or an upstream rejection (the status reply's ``errors``)."""
        self.errors[code] = self.errors.get(code, 0) + 1
        self.gmetrics.errors.labels(code).inc()
        self.metrics.errors.labels(code).inc()

    # -- answers ------------------------------------------------------------------------

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
            raise GatewayError(
                "unknown-topic",
                f"topic {req.topic!r} is not served here{hint}; the list request names every topic",
            )
        length = store.stable_length
        log = self.publisher.seqlogs.get(req.topic) or query.SeqLog()
        limit = self.settings.max_request_records
        if isinstance(req, gp.History):
            self._count_request("history")
            for name in ("start_ms", "end_ms", "last"):
                value = getattr(req, name)
                if value is not None and not -(2**63) <= value < 2**63:
                    raise GatewayError("invalid-field", f"{name} {value} is not an int64")
            times = store.view(0, length)["ts_ms"]
            span = query.resolve_history(req, times, limit)
        else:
            self._count_request("snapshot")
            if req.since_seq >= 0:
                self.gmetrics.gaps.inc()
            span = query.resolve_snapshot(req, length, store.store_id.hex(), log, limit)
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
        seqlogs = self.publisher.seqlogs
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
                    seq=seqlogs[key].seq if key in seqlogs else 0,
                    count=n,
                    first_ms=int(times[0]) if n else None,
                    last_ms=int(times[-1]) if n else None,
                    features=self.feature_infos.get(key),
                )
            )
        return gp.Listing(id=req.id, topics=topics)

    def _status(self, request_id: int) -> gp.Status:
        up = self.upstream()
        ends = up.upstream_ends if up is not None else {}
        seqlogs = self.publisher.seqlogs
        topics = {}
        for key, store in sorted(self.stores.stores.items()):
            mark = self.stores.upstream.get(key)
            end = ends[key][0] if key in ends else -1
            topics[key] = gp.TopicStatus(
                length=store.committed_length,
                seq=seqlogs[key].seq if key in seqlogs else 0,
                upstream_end=end,
                lag_records=max(0, end - (mark.offset if mark else 0)) if end >= 0 else 0,
            )
        age = up.upstream_age_s if up is not None else -1.0
        return gp.Status(
            id=request_id,
            instance=self.publisher.instance,
            wall_ms=int(time.time() * 1000),
            upstream=self.upstream_endpoint,
            upstream_age_s=round(age, 3),
            topics=topics,
            consumers=len(self.peers),
            subscriptions=self.publisher.subscriptions,
            requests=dict(self.requests),
            errors=dict(self.errors),
            published=self.publisher.published,
        )

    def _count_request(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1
        self.gmetrics.requests.labels(kind).inc()
