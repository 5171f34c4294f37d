"""``barstream status`` carries the health model: each service's state and reasons from its
own /metrics text (the real registries, rendered and parsed back), ``failed``/``down`` for
a service that does not answer, the worst state in the JSON and on the health line."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest

from barstream import status, status_view
from barstream.shared import health
from barstream.shared.metrics import DownloaderMetrics, Metrics, TransformerMetrics


def scraped(m: Metrics) -> status.ServiceStatus:
    text = generate_latest(m.registry).decode()
    return status.service_status(m.service, f"http://x/{m.service}", status.parse_metrics(text))


def test_state_and_reasons_come_from_each_service(tmp_path: Path) -> None:
    down = status.offline_status("downloader", "http://x", tmp_path / "none", "refused")
    t = Metrics("transformer")
    TransformerMetrics(t).held_streams.labels("EUR-USD", "BID", "fetch").set(1)
    t.malformed.labels("feed_client").inc()
    a = Metrics("aggregator")
    gw = Metrics("gateway")
    gw.feed_lag_seconds.set(health.LAG_S + 1)
    got = [down, scraped(t), scraped(a), scraped(gw)]
    assert [(s.health, s.reasons) for s in got] == [
        ("failed", ["down"]),
        ("degraded", ["held", "rejected"]),
        ("healthy", []),
        ("degraded", ["lag"]),
    ]
    out = status.as_json(got)
    assert out["health"] == "failed"
    assert out["unhealthy"] == {
        "downloader": ["down"],
        "transformer": ["held", "rejected"],
        "gateway": ["lag"],
    }
    assert out["services"]["aggregator"]["health"] == "healthy"
    text = status_view.render(got, streams=False)
    (line,) = [x for x in text.splitlines() if x.startswith("health:")]
    assert line == (
        "health: failed: downloader failed (down); transformer degraded (held, rejected); "
        "gateway degraded (lag)"
    ), text
    assert status.overall_health(got[2:3]) == "healthy"
    assert status.overall_health(got[2:]) == "degraded"


def test_a_down_downloader_still_says_its_gaps(tmp_path: Path) -> None:
    st = status.ServiceStatus("downloader", "http://x", gaps={"EUR-USD/BID/fetch": 1})
    assert status.judge_health(st).reasons == ["down", "gap"]
    d = Metrics("downloader")
    DownloaderMetrics(d).gaps.labels("EUR-USD", "BID", "fetch").set(1)
    up = scraped(d)
    assert (up.health, up.reasons) == ("degraded", ["gap"])


def test_metrics_without_the_health_model_are_judged_from_their_facts() -> None:
    samples = status.parse_metrics(
        "barstream_upstream_heartbeat_age_seconds 45\nbarstream_feed_lag_seconds 1\n"
    )
    st = status.service_status("aggregator", "http://x", samples)
    assert (st.health, st.reasons) == ("degraded", ["upstream_stalled"])
