"""deploy/grafana/barstream.json: valid JSON, a Grafana dashboard whose every query names
metrics that exist — in the services' registries (every service's own classes, the API's,
the supervisor event listener's) or as Prometheus' own series (``up``, ``ALERTS``) — and
that covers the health model and each degraded condition the alert rules watch."""

from __future__ import annotations

import json
import re

from prometheus_client import CollectorRegistry

from barstream.services.api.app import ApiMetrics
from barstream.shared import health
from barstream.shared.metrics import (
    DownloaderMetrics,
    GatewayMetrics,
    Metrics,
    ResamplerMetrics,
    TransformerMetrics,
)
from barstream.supervisor_events import StateMetrics
from tests.support.ops import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "barstream.json"
ALERTS = REPO / "deploy" / "alerts.yml"
#: Series Prometheus makes itself.
BUILTIN = frozenset({"up", "ALERTS"})
NAME = re.compile(r"\b(?:barstream|process|python)_[a-z0-9_]+\b|\b(?:up|ALERTS)\b")


def exported() -> set[str]:
    """Every sample name (``_total``, ``_bucket`` … included) any barstream process exports."""
    registries: list[CollectorRegistry] = []
    for cls in (DownloaderMetrics, TransformerMetrics, ResamplerMetrics, GatewayMetrics):
        m = Metrics("x")
        cls(m)
        registries.append(m.registry)
    registries += [ApiMetrics().registry, StateMetrics().registry]
    names: set[str] = set()
    for r in registries:
        for family in r.collect():
            names.add(family.name)  # labelled metrics have no sample until first used
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
            names.update(family.name + x for x in suffixes.get(family.type, ()))
            names.update(s.name for s in family.samples)
    return names


def queries() -> list[str]:
    body = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in body["panels"] for t in p["targets"]]


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    body = json.loads(DASHBOARD.read_text())
    assert body["uid"] and body["title"] and isinstance(body["schemaVersion"], int)
    ids = [p["id"] for p in body["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    for p in body["panels"]:
        assert p["type"] in {"stat", "table", "timeseries"}, p
        assert (
            set(p["gridPos"]) == {"x", "y", "w", "h"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        assert p["targets"] and all(t["expr"].strip() and t["refId"] for t in p["targets"])


def test_every_metric_the_dashboard_names_exists() -> None:
    names = exported()
    assert health.STATE_METRIC in names and health.REASON_METRIC in names
    used = {n for q in queries() for n in NAME.findall(q)}
    assert {health.STATE_METRIC, health.REASON_METRIC, "barstream_held_streams"} <= used
    assert {"barstream_gaps", "barstream_upstream_heartbeat_age_seconds"} <= used
    assert "barstream_feed_lag_seconds" in used and "barstream_malformed_messages_total" in used
    missing = sorted(used - names - BUILTIN)
    assert not missing, f"the dashboard names metrics no service exports: {missing}"


def test_every_metric_the_alert_rules_name_exists_or_is_another_parts() -> None:
    """The rules may name the counters of other parts of issue 16 (decode helper restarts,
    rejected messages) only through barstream_health_reason, which always exists."""
    text = ALERTS.read_text()
    exprs = re.findall(r"^\s+expr: (.+)$", text, re.M)
    assert len(exprs) == 9, exprs
    used = {n for e in exprs for n in NAME.findall(e)}
    assert not sorted(used - exported() - BUILTIN)
    for reason in (health.HELPER_RESTARTED, health.REJECTED):
        assert f'{health.REASON_METRIC}{{reason="{reason}"}}' in text
