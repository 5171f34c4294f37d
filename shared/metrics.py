"""Every Prometheus metric barstream exports is defined here (base units, ``_total``
counters, ``barstream_`` prefix): ``Metrics``, what every service exports, and one class per
service for its own metrics on the same registry (``GatewayMetrics``). Each service process
owns one ``Metrics`` (its own registry) and serves it on its own port at ``/metrics``.

Labels: ``service`` is set once per registry via a constant label-free naming scheme —
each process serves only its own metrics, and Prometheus' ``job``/``instance`` tell them
apart. A metric per store carries ``symbol``, ``side`` and ``timeframe``: the three parts of
the store key ``SYMBOL/SIDE/TIMEFRAME`` (``stream_labels``); for the downloader's journal
streams (``SYMBOL/SIDE/fetch``) and the transformer's (``SYMBOL/SIDE/days``) ``timeframe``
is ``fetch`` / ``days``.

Every registry also carries prometheus_client's process, platform and GC collectors
(``process_resident_memory_bytes``, ``process_open_fds``, ``python_info``,
``python_gc_*``: ``runtime_registry``), and importing this module turns off the
``*_created`` series of counters, histograms and summaries for the whole process
(``disable_created_metrics``): every barstream process that exports metrics imports it.
"""

from __future__ import annotations

import errno
import logging
import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from barstream.shared.errors import BindError
from barstream.shared.gateway_protocol import CONSUMER_TTL_S
from barstream.shared.health import HealthCollector

log = logging.getLogger("barstream.metrics")

PREFIX: Final = "barstream_"
#: The labels of a metric per store: the three parts of its key.
STREAM_LABELS: Final = ("symbol", "side", "timeframe")

# No ``*_created`` twin for any counter/histogram of this process (global in prometheus_client).
disable_created_metrics()  # type: ignore[no-untyped-call]


def stream_labels(key: str, *, strict: bool = True) -> tuple[str, str, str]:
    """The ``symbol``, ``side``, ``timeframe`` label values of a store key
    ``SYMBOL/SIDE/TIMEFRAME`` (three non-empty parts; the journals' ``…/fetch`` and
    ``…/days`` give ``fetch`` and ``days``). A key that is not three non-empty parts raises
    ValueError; with ``strict=False`` (a key read off the wire) it becomes
    ``(key, "", "")`` instead, so a bad upstream cannot stop the caller."""
    parts = key.split("/")
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    if strict:
        raise ValueError(f"not a store key SYMBOL/SIDE/TIMEFRAME: {key!r}")
    return key, "", ""


def runtime_registry() -> CollectorRegistry:
    """A new registry with the process (memory, CPU, file descriptors), platform
    (``python_info``) and garbage-collector collectors registered on it."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class TransformerMetrics:
    """The transformer's own metrics, on its service's registry."""

    def __init__(self, base: Metrics) -> None:
        self.held_streams = Gauge(
            PREFIX + "held_streams",
            "Streams held by a payload that failed validation (1 = held).",
            STREAM_LABELS,
            registry=base.registry,
        )
        self.decode_helper_restarts = Counter(
            PREFIX + "decode_helper_restarts",
            "Decode helper processes killed and restarted (hung past the timeout, died, "
            "answered nonsense); their batch was decoded in the transformer.",
            ["reason"],
            registry=base.registry,
        )


class ResamplerMetrics:
    """The resampler's own metrics, on its service's registry."""

    def __init__(self, base: Metrics) -> None:
        self.bars_out = Counter(
            PREFIX + "bars_out",
            "Bars written, by timeframe.",
            ["timeframe"],
            registry=base.registry,
        )
        self.last_closed_bar_time = Gauge(
            PREFIX + "last_closed_bar_time_seconds",
            "Open time of the last closed (non-provisional) bar per store.",
            STREAM_LABELS,
            registry=base.registry,
        )


class Metrics:
    """The metrics of one service process."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = runtime_registry()
        r = self.registry
        self.info = Gauge(
            PREFIX + "service_info",
            "Constant 1, labelled with the service name.",
            ["service"],
            registry=r,
        )
        self.info.labels(service).set(1)
        self.up_since = Gauge(
            PREFIX + "start_time_seconds", "Unix time the process started.", registry=r
        )
        self.up_since.set_to_current_time()
        # -- feed, downstream side (records we consume) --
        self.records_in = Counter(
            PREFIX + "records_in", "Records received from the upstream feed.", registry=r
        )
        self.batches_in = Counter(
            PREFIX + "batches_in", "Batches received from the upstream feed.", registry=r
        )
        self.rewinds_in = Counter(
            PREFIX + "rewinds_in",
            "Batches that rewound an upstream stream (start < position).",
            registry=r,
        )
        self.feed_lag_records = Gauge(
            PREFIX + "feed_lag_records",
            "Upstream committed end minus our position.",
            STREAM_LABELS,
            registry=r,
        )
        self.feed_lag_seconds = Gauge(
            PREFIX + "feed_lag_seconds",
            "Seconds this service has been behind its upstream's committed end (0 = caught up); "
            "while the upstream is silent past the peer timeout, at least that silence.",
            registry=r,
        )
        self.upstream_heartbeat_age = Gauge(
            PREFIX + "upstream_heartbeat_age_seconds",
            "Seconds since the last message from the upstream, across reconnects.",
            registry=r,
        )
        self.reconnects = Counter(
            PREFIX + "feed_reconnects", "Reconnections to the upstream feed.", registry=r
        )
        self.malformed = Counter(
            PREFIX + "malformed_messages",
            "Messages dropped because they were malformed.",
            ["socket"],
            registry=r,
        )
        self.rejected = Counter(
            PREFIX + "rejected_messages",
            "Messages refused because a name in them (stream key, symbol, side, timeframe, "
            "topic) is not one this service takes, by socket and reason (shared/names.py).",
            ["socket", "reason"],
            registry=r,
        )
        # -- feed, upstream side (records we serve) --
        self.records_out = Counter(
            PREFIX + "records_out", "Records sent to downstream peers.", registry=r
        )
        self.batches_out = Counter(
            PREFIX + "batches_out", "Batches sent to downstream peers.", registry=r
        )
        self.peers = Gauge(
            PREFIX + "feed_peers", "Downstream peers following this service.", registry=r
        )
        # -- stores --
        self.store_length = Gauge(
            PREFIX + "store_length_records",
            "Records in each store.",
            STREAM_LABELS,
            registry=r,
        )
        self.committed_length = Gauge(
            PREFIX + "committed_length_records",
            "Committed length of each store.",
            STREAM_LABELS,
            registry=r,
        )
        self.last_bar_time = Gauge(
            PREFIX + "last_bar_time_seconds",
            "Open time of the last record of each store (UTC).",
            STREAM_LABELS,
            registry=r,
        )
        self.commits = Counter(PREFIX + "commits", "Checkpoint commits.", registry=r)
        self.commit_seconds = Histogram(
            PREFIX + "commit_duration_seconds",
            "Time to flush stores and write the checkpoint.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.records_written = Counter(
            PREFIX + "records_written", "Records appended to own stores.", registry=r
        )
        self.rewinds = Counter(
            PREFIX + "rewinds",
            "Rewrites of this service's committed records (provisional updates, revisions, late days).",
            STREAM_LABELS,
            registry=r,
        )
        self.errors = Counter(PREFIX + "errors", "Errors by kind.", ["kind"], registry=r)
        #: barstream_health_state / barstream_health_reason, judged at each scrape from the
        #: metrics above and those services add (barstream.shared.health)
        self.health = HealthCollector(r)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, port: int, host: str = "127.0.0.1", *, path: str = "") -> int:
        """Serve /metrics on ``host:port`` (0 = ephemeral) in a daemon thread; returns the port.
        A port it cannot bind raises ``BindError`` naming ``<service>.endpoints.metrics_port``
        (``path``: the configuration file, for the message)."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise BindError(
                f"{self.service}.endpoints.metrics_port",
                port,
                f"cannot listen on {host}:{port}: {e.strerror or e}",
                in_use=e.errno == errno.EADDRINUSE,
                path=path,
            ) from e
        self._server, self._thread = server, thread
        bound = int(server.server_port)
        log.info("%s: metrics on http://%s:%d/metrics", self.service, host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class DownloaderMetrics:
    """The downloader's own metrics, in its process's registry beside the base ``Metrics``
    (``errors`` is the base counter, kept here so the fetch schedule needs one object)."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.errors = metrics.errors
        self.fetches = Counter(
            PREFIX + "fetches", "Day fetches by outcome.", ["outcome"], registry=r
        )
        self.gaps = Gauge(
            PREFIX + "gaps",
            "Days that are explicit gaps: not fetched after retries, or skipped by the user.",
            STREAM_LABELS,
            registry=r,
        )
        self.skipped = Gauge(
            PREFIX + "gaps_skipped",
            "Of barstream_gaps, the days the user skipped (barstream skip-day).",
            STREAM_LABELS,
            registry=r,
        )
        self.budget_requests = Gauge(
            PREFIX + "request_budget_requests",
            "Requests that took a token from the budget.",
            registry=r,
        )
        self.budget_wait = Gauge(
            PREFIX + "request_budget_wait_seconds",
            "Seconds spent waiting for the request budget.",
            registry=r,
        )
        self.revisions = Counter(
            PREFIX + "revisions",
            "Days whose content changed on re-fetch.",
            STREAM_LABELS,
            registry=r,
        )
        self.attempt_failures = Counter(
            PREFIX + "fetch_attempt_failures",
            "Failed HTTP attempts by reason (oversized, truncated, timeout, connection, http, "
            "encoding, empty, refused); each is retried, a day still failing becomes a gap.",
            ["reason"],
            registry=r,
        )


class GatewayMetrics:
    """The gateway's own metrics, on its service's registry."""

    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
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
