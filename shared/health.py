"""The health model: is a service healthy, degraded or failed, and why.

Every service's registry carries a ``HealthCollector`` (``Metrics`` registers it), which
judges at scrape time from the service's own metrics on the same registry and exports::

    barstream_health_state{state}    1 for the current state, 0 for the other two
                                     (state: healthy, degraded, failed)
    barstream_health_reason{reason}  1 while that reason holds, 0 else (every reason of
                                     REASONS is always exported, so alerts and dashboards
                                     can name it)

The reasons (``REASONS``) and what raises each:

- ``held``: a stream held by a bad payload (``barstream_held_streams`` > 0);
- ``gap``: a day that is an explicit gap, also one skipped by the user (``barstream_gaps`` > 0);
- ``upstream_stalled``: no message from the upstream for ``STALLED_S`` seconds
  (``barstream_upstream_heartbeat_age_seconds``);
- ``lag``: behind the upstream's committed end for ``LAG_S`` seconds
  (``barstream_feed_lag_seconds``);
- ``helper_restarted``: a helper process (the transformer's decode helper) restarted in the
  last ``RECENT_S`` seconds (``barstream_decode_helper_restarts_total`` or the generic
  ``barstream_helper_restarts_total``, whichever the service has);
- ``rejected``: peers' messages rejected or dropped as malformed, or upstream batches refused
  as invalid, in the last ``RECENT_S`` seconds (``barstream_rejected_messages_total``,
  ``barstream_malformed_messages_total``, ``barstream_errors_total{kind="upstream_invalid"}``);
- ``fatal``: the service met an error it cannot go on from (``HealthCollector.fail``) and is
  exiting: the state is ``failed``.

Any reason but ``fatal`` makes the state ``degraded``. A service that does not answer at all
is ``failed`` too, but it cannot say so itself: ``barstream status`` judges that from the
failed scrape and supervisord (``barstream.status``), Prometheus from ``up == 0`` and the
supervisor event listener's ``barstream_process_state`` (deploy/alerts.yml).

The counters are judged by change: the collector keeps each counter's last value and the
time it last grew (starting from 0 at process start, as the counter does), so a service
that rejected messages 10 minutes ago is healthy again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

HEALTHY: Final = "healthy"
DEGRADED: Final = "degraded"
FAILED: Final = "failed"
STATES: Final = (HEALTHY, DEGRADED, FAILED)

HELD: Final = "held"
GAP: Final = "gap"
UPSTREAM_STALLED: Final = "upstream_stalled"
LAG: Final = "lag"
HELPER_RESTARTED: Final = "helper_restarted"
REJECTED: Final = "rejected"
FATAL: Final = "fatal"
REASONS: Final = (HELD, GAP, UPSTREAM_STALLED, LAG, HELPER_RESTARTED, REJECTED, FATAL)

#: Upstream silent this long: ``upstream_stalled`` (the feed heartbeats every second; the
#: same threshold as the BarstreamUpstreamStalled alert).
STALLED_S: Final = 30.0
#: Behind the upstream this long: ``lag`` (as the BarstreamFeedLagging alert).
LAG_S: Final = 60.0
#: A counter that grew within this window keeps its reason on.
RECENT_S: Final = 300.0

STATE_METRIC: Final = "barstream_health_state"
REASON_METRIC: Final = "barstream_health_reason"

#: Sample names a gauge reason is read from (any sample > 0 raises it).
_POSITIVE: Final[dict[str, tuple[str, ...]]] = {
    HELD: ("barstream_held_streams",),
    GAP: ("barstream_gaps",),
}
#: Sample names and threshold of the reasons judged by a gauge's value.
_AT_LEAST: Final = {
    UPSTREAM_STALLED: ("barstream_upstream_heartbeat_age_seconds", STALLED_S),
    LAG: ("barstream_feed_lag_seconds", LAG_S),
}
#: Counters whose growth raises a reason.
_GROWING: Final[dict[str, tuple[str, ...]]] = {
    HELPER_RESTARTED: (
        "barstream_decode_helper_restarts_total",
        "barstream_helper_restarts_total",
    ),
    REJECTED: (
        "barstream_rejected_messages_total",
        "barstream_malformed_messages_total",
        "barstream_errors_total",  # only kind="upstream_invalid" (_ONLY)
    ),
}
#: Of a counter, only the samples with these labels count.
_ONLY: Final = {"barstream_errors_total": ("kind", "upstream_invalid")}
_SOURCES: Final = frozenset(
    {
        *(n for names in _POSITIVE.values() for n in names),
        *(n for n, _ in _AT_LEAST.values()),
        *(n for names in _GROWING.values() for n in names),
    }
)


def state_of(reasons: set[str] | frozenset[str] | list[str]) -> str:
    """The state the reasons make (``fatal`` → failed, any other → degraded)."""
    if FATAL in reasons:
        return FAILED
    return DEGRADED if reasons else HEALTHY


class HealthCollector(Collector):
    """``barstream_health_state`` and ``barstream_health_reason`` of one registry, judged
    at each scrape from that registry's own samples (module docstring)."""

    def __init__(
        self, registry: CollectorRegistry, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._sources = registry.restricted_registry(sorted(_SOURCES))
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._grew_at: dict[str, float] = {}
        self._fatal = ""
        registry.register(self)

    def fail(self, why: str) -> None:
        """The service is exiting on an error it cannot go on from: state ``failed``."""
        self._fatal = why or "fatal"

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(frozenset()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families(self.reasons()))

    def reasons(self) -> frozenset[str]:
        """The reasons that hold now."""
        now = self._clock()
        out: set[str] = {FATAL} if self._fatal else set()
        by_name: dict[str, list[tuple[tuple[tuple[str, str], ...], float]]] = {}
        for family in self._sources.collect():
            for s in family.samples:
                by_name.setdefault(s.name, []).append((tuple(sorted(s.labels.items())), s.value))
        for reason, names in _POSITIVE.items():
            if any(v > 0 for n in names for _, v in by_name.get(n, ())):
                out.add(reason)
        for reason, (name, limit) in _AT_LEAST.items():
            if any(v >= limit for _, v in by_name.get(name, ())):
                out.add(reason)
        with self._lock:
            for reason, names in _GROWING.items():
                for n in names:
                    for labels, v in by_name.get(n, ()):
                        if n in _ONLY and _ONLY[n] not in labels:
                            continue
                        key = (n, labels)
                        if v > self._last.get(key, 0.0):
                            self._grew_at[reason] = now
                        self._last[key] = v
                grew = self._grew_at.get(reason)
                if grew is not None and now - grew < RECENT_S:
                    out.add(reason)
        return frozenset(out)

    @staticmethod
    def _families(reasons: frozenset[str]) -> list[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            STATE_METRIC,
            "Health of this service: 1 for the current state (healthy, degraded, failed).",
            labels=["state"],
        )
        current = state_of(reasons)
        for s in STATES:
            state.add_metric([s], 1.0 if s == current else 0.0)
        reason = GaugeMetricFamily(
            REASON_METRIC,
            "1 while a reason for this service's health state holds (held, gap, "
            "upstream_stalled, lag, helper_restarted, rejected, fatal).",
            labels=["reason"],
        )
        for r in REASONS:
            reason.add_metric([r], 1.0 if r in reasons else 0.0)
        return [state, reason]
