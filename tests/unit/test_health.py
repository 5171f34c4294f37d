"""The health model of every service's registry (barstream.shared.health): judged at each
scrape from the registry's own metrics, one-hot state, every reason always exported."""

from __future__ import annotations

from prometheus_client import Counter, generate_latest

from barstream.shared import health
from barstream.shared.metrics import DownloaderMetrics, Metrics, TransformerMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def states(m: Metrics) -> dict[str, float]:
    r = m.registry
    return {s: r.get_sample_value(health.STATE_METRIC, {"state": s}) or 0.0 for s in health.STATES}


def reasons(m: Metrics) -> set[str]:
    r = m.registry
    got = {x: r.get_sample_value(health.REASON_METRIC, {"reason": x}) for x in health.REASONS}
    assert all(v is not None for v in got.values()), got  # every reason always exported
    return {x for x, v in got.items() if v}


def test_a_new_service_is_healthy_and_exports_every_state_and_reason() -> None:
    m = Metrics("aggregator")
    text = generate_latest(m.registry).decode()
    for s in health.STATES:
        assert f'barstream_health_state{{state="{s}"}}' in text
    assert states(m) == {"healthy": 1.0, "degraded": 0.0, "failed": 0.0}
    assert reasons(m) == set()


def test_held_and_gap_streams_degrade_until_cleared() -> None:
    m = Metrics("transformer")
    t = TransformerMetrics(m)
    t.held_streams.labels("EUR-USD", "BID", "fetch").set(1)
    assert reasons(m) == {health.HELD} and states(m)["degraded"] == 1.0
    t.held_streams.labels("EUR-USD", "BID", "fetch").set(0)
    assert reasons(m) == set() and states(m)["healthy"] == 1.0
    d = Metrics("downloader")
    DownloaderMetrics(d).gaps.labels("EUR-USD", "BID", "fetch").set(2)
    assert reasons(d) == {health.GAP}


def test_stalled_and_lagging_upstream_by_threshold() -> None:
    m = Metrics("gateway")
    m.upstream_heartbeat_age.set(health.STALLED_S - 1)
    m.feed_lag_seconds.set(health.LAG_S - 1)
    assert reasons(m) == set()
    m.upstream_heartbeat_age.set(health.STALLED_S)
    m.feed_lag_seconds.set(health.LAG_S + 5)
    assert reasons(m) == {health.UPSTREAM_STALLED, health.LAG}


def test_counters_degrade_for_the_recent_window_after_they_grow() -> None:
    clock = Clock()
    m = Metrics("resampler")
    m.registry.unregister(m.health)
    m.health = health.HealthCollector(m.registry, clock=clock)
    restarts = Counter(
        "barstream_decode_helper_restarts", "helper restarts (another part's)", registry=m.registry
    )
    assert reasons(m) == set()
    m.malformed.labels("feed_server").inc()
    restarts.inc()
    assert reasons(m) == {health.REJECTED, health.HELPER_RESTARTED}
    clock.now += health.RECENT_S - 1
    assert reasons(m) == {health.REJECTED, health.HELPER_RESTARTED}
    clock.now += 2  # nothing new for RECENT_S: healthy again
    assert reasons(m) == set() and states(m)["healthy"] == 1.0
    m.malformed.labels("feed_server").inc()  # a new one: degraded again
    assert reasons(m) == {health.REJECTED}


def test_a_fatal_error_is_failed() -> None:
    m = Metrics("aggregator")
    m.health.fail("store id mismatch")
    assert states(m) == {"healthy": 0.0, "degraded": 0.0, "failed": 1.0}
    assert reasons(m) == {health.FATAL}
    assert health.state_of({health.LAG}) == health.DEGRADED
    assert health.state_of(set()) == health.HEALTHY


def test_only_upstream_invalid_errors_count_as_rejected() -> None:
    m = Metrics("aggregator")
    m.errors.labels("commit_failed").inc()
    assert reasons(m) == set()
    m.errors.labels("upstream_invalid").inc()
    assert reasons(m) == {health.REJECTED}
