"""Metrics: one registry per process, served over HTTP, Prometheus naming."""

from __future__ import annotations

import urllib.request

import pytest

from barstream.shared.metrics import PREFIX, Metrics, stream_labels

RUNTIME = ("process_", "python_")


def test_serves_barstream_metrics_over_http() -> None:
    m = Metrics("aggregator")
    port = m.serve(0)
    try:
        m.records_in.inc(5)
        m.malformed.labels("feed_client").inc()
        m.store_length.labels(*stream_labels("EUR-USD/BID/1m")).set(42)
        m.commit_seconds.observe(0.002)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        m.close()
    assert 'barstream_service_info{service="aggregator"} 1.0' in text
    assert "barstream_records_in_total 5.0" in text
    assert 'barstream_malformed_messages_total{socket="feed_client"} 1.0' in text
    assert 'barstream_store_length_records{side="BID",symbol="EUR-USD",timeframe="1m"} 42.0' in text
    assert "barstream_commit_duration_seconds_count 1.0" in text
    names = {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    # ours carry the prefix; prometheus_client's process/platform/GC collectors are there too
    assert names and all(n.startswith((PREFIX, *RUNTIME)) for n in names)
    assert any(n.startswith(PREFIX) for n in names)
    for name in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert name in names, name
    assert any(n.startswith("python_gc_") for n in names)
    assert not [n for n in names if n.endswith("_created")]


def test_stream_labels_split_a_store_key() -> None:
    assert stream_labels("EUR-USD/BID/1m") == ("EUR-USD", "BID", "1m")
    assert stream_labels("EUR-USD/ASK/fetch") == ("EUR-USD", "ASK", "fetch")  # journals
    assert stream_labels("EUR-USD/BID/days") == ("EUR-USD", "BID", "days")
    for bad in ("nodelimiter", "EUR-USD/BID", "a//b", "a/b/c/d", "/BID/1m", ""):
        with pytest.raises(ValueError):
            stream_labels(bad)
        assert stream_labels(bad, strict=False) == (bad, "", "")  # a key off the wire


def test_registries_are_separate() -> None:
    a, b = Metrics("a"), Metrics("b")
    a.records_out.inc(3)
    assert a.registry.get_sample_value("barstream_records_out_total") == 3
    assert b.registry.get_sample_value("barstream_records_out_total") == 0
    a.close()
    b.close()  # closing a registry that never served is fine
