"""A stalled feed is visible and alarms: under the REAL supervisord.conf (demo pipeline), the
resampler is stopped for 60 s; the gateway's /metrics show an upstream heartbeat age that
grows past 30 s (reconnects do not reset it) and a feed lag that grows, and a real
Prometheus scraping the gateway with the shipped rules (deploy/alerts.yml) fires
``BarstreamUpstreamStalled`` (evaluated by Prometheus itself, not only by promtool)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from barstream.supervise import Supervisor, program, service_programs
from tests.integration.test_ops_pipeline import ensure_prometheus
from tests.support.ops import (
    REPO,
    SCRAPE_ERRORS,
    free_port,
    pipeline_config,
    sample,
    scrape,
    write_config,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

ALERTS = REPO / "deploy" / "alerts.yml"
AGE = "barstream_upstream_heartbeat_age_seconds"
LAG = "barstream_feed_lag_seconds"
STOPPED_S = 60.0


def gauge(port: int, name: str) -> float:
    """The one series of ``name`` on ``port``'s /metrics, whatever its labels."""
    series = scrape(port).get(name, [])
    assert len(series) == 1, (name, series)
    return series[0][1]


def start_prometheus(tmp: Path, gateway_port: int) -> tuple[subprocess.Popen[bytes], int]:
    conf = tmp / "prometheus.yml"
    conf.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n"
        "  - job_name: barstream\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{gateway_port}']\n"
        "        labels: {service: gateway}\n"
    )
    check = subprocess.run(
        ["promtool", "check", "config", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("wb"),
    )
    return prom, port


def api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def alert_states(port: int) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a in api(port, "alerts")["alerts"]:
        out.setdefault(a["labels"]["alertname"], set()).add(a["state"])
    return out


def test_promtool_accepts_the_shipped_alert_rules() -> None:
    ensure_prometheus()
    done = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout, done.stdout
    assert "alerts.yml" in (REPO / "deploy" / "prometheus.yml").read_text()  # rule_files


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each query of deploy/grafana/barstream.json as a recording rule: promtool parses
    its PromQL (the dashboard's ``${…}`` variables are only in datasource fields)."""
    ensure_prometheus()
    board = json.loads((REPO / "deploy" / "grafana" / "barstream.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs and not any("$" in e for e in exprs)
    rules = tmp_path / "dashboard.yml"
    body = "".join(
        f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n"
        for i, e in enumerate(exprs)
    )
    rules.write_text(f"groups:\n  - name: dashboard\n    rules:\n{body}")
    done = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout, done.stdout


@pytest.mark.timeout(420)  # supervisord + bars (~30 s), 60 s stopped, Prometheus, shutdown
def test_stopped_upstream_ages_past_30s_and_the_alert_fires() -> None:
    ensure_prometheus()
    with tempfile.TemporaryDirectory(prefix="bs-stall-", dir="/tmp") as d:
        run_dir = Path(d)
        data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
        config = write_config(run_dir / "pipeline.toml", data)
        gw = int(data["gateway"]["endpoints"]["metrics_port"])
        sup = Supervisor(config, run_dir / "var", demo=True, events_port=free_port())
        proc = sup.start(foreground=True)
        prom: subprocess.Popen[bytes] | None = None
        try:
            states = sup.wait_running(service_programs(demo=True), 30)
            assert all(s == "RUNNING" for s in states.values()), states
            wait_for(
                lambda: (sample(scrape(gw), "barstream_records_in_total") or 0) > 0,
                90,
                what="bars at the gateway",
                ignore=SCRAPE_ERRORS,
            )
            prom, prom_port = start_prometheus(run_dir, gw)
            wait_for(
                lambda: (
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{prom_port}/-/ready", timeout=2
                    ).status
                    == 200
                ),
                60,
                what="prometheus ready",
                ignore=SCRAPE_ERRORS,
            )
            rules = {r["name"]: r for g in api(prom_port, "rules")["groups"] for r in g["rules"]}
            assert {"BarstreamUpstreamStalled", "BarstreamFeedLagging"} <= set(rules), rules
            assert gauge(gw, AGE) < 5.0 and gauge(gw, LAG) < 5.0  # a live upstream
            assert "BarstreamUpstreamStalled" not in alert_states(prom_port)

            sup.rpc().supervisor.stopProcess(program("resampler"), True)
            stopped = time.monotonic()
            ages: list[float] = []
            lags: list[float] = []
            while time.monotonic() - stopped < STOPPED_S:
                time.sleep(2.0)
                ages.append(gauge(gw, AGE))
                lags.append(gauge(gw, LAG))
            reconnects = sample(scrape(gw), "barstream_feed_reconnects_total") or 0
            assert reconnects >= 3, reconnects  # it kept trying; none of them reset the age
            assert ages == sorted(ages) and len(set(ages)) == len(ages), ages  # grows
            assert ages[-1] > 30.0 and ages[-1] >= STOPPED_S - 5.0, ages
            assert lags == sorted(lags) and lags[-1] > 30.0, lags  # grows with the silence
            assert lags[-1] > lags[len(lags) // 2] > lags[0], lags

            def firing() -> bool:
                return "firing" in alert_states(prom_port).get("BarstreamUpstreamStalled", set())

            wait_for(
                firing,
                30,
                what=f"BarstreamUpstreamStalled firing (alerts: {alert_states(prom_port)})",
                every_s=1.0,
                ignore=SCRAPE_ERRORS,
            )
            sup.rpc().supervisor.startProcess(program("resampler"), True)
            wait_for(
                lambda: gauge(gw, AGE) < 5.0 and gauge(gw, LAG) < 5.0,
                60,
                what="the age and lag back near 0 after the resampler restarts",
                ignore=SCRAPE_ERRORS,
            )
        finally:
            if prom is not None:
                prom.terminate()
                try:
                    prom.wait(30)
                except subprocess.TimeoutExpired:
                    prom.kill()
                    prom.wait()
            sup.shutdown(proc)
