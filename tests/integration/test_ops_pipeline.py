"""A small real pipeline under the REAL supervisord.conf (temp config, run dir, data dir and
ports through its environment variables), with the fake upstream as a supervisord program:

- supervisorctl start / stop / restart / status of a service; the event listener sees it;
  ``barstream ctl`` accepts bare service names;
- ``barstream status`` parses the services' real /metrics;
- every /metrics passes ``promtool check metrics``, has the process/platform collectors, no
  ``_created`` series, and per-store metrics labelled ``symbol``/``side``/``timeframe``;
- a real Prometheus scrapes every service and sees records rising (HTTP API);
- ``barstream rebuild`` recomputes the stores from the raw cache, equal to the live ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from barstream.shared.config import SERVICES, section
from barstream.shared.store import Store
from barstream.shared.timeframe import Timeframe
from barstream.status import parse_metrics
from barstream.supervise import Supervisor, default_conf, service_programs
from tests.support.ops import (
    SCRAPE_ERRORS,
    cli,
    free_port,
    pipeline_config,
    sample,
    scrape,
    scrape_text,
    write_config,
)
from tests.support.wait import wait_for

#: A small ``[[features]]`` set: every service, the features stage too, keeps stores.
FEATURES = [
    {
        "name": "ops",
        "timeframes": ["1m", "1h"],
        "indicators": [
            {"kind": "rsi", "params": {"period": 14}},
            {"kind": "sma", "params": {"period": 5}},
        ],
    }
]


@dataclass
class Pipeline:
    sup: Supervisor
    config: Path
    data: dict[str, Any]
    run_dir: Path

    def metrics_port(self, service: str) -> int:
        port: int = self.data[section(service)]["endpoints"]["metrics_port"]
        return port

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(default_conf()), *args],
            env=self.sup.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with tempfile.TemporaryDirectory(prefix="bs-ops-", dir="/tmp") as d:
        run_dir = Path(d)
        data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
        data["features"] = FEATURES  # the features stage has stores (idle without a set)
        config = write_config(run_dir / "pipeline.toml", data)
        sup = Supervisor(config, run_dir / "var", demo=True, events_port=free_port())
        proc = sup.start(foreground=True)
        try:
            states = sup.wait_running(service_programs(demo=True), 30)
            assert all(s == "RUNNING" for s in states.values()), states
            p = Pipeline(sup, config, data, run_dir)
            wait_for(
                lambda: sample(
                    scrape(p.metrics_port("gateway")),
                    "barstream_committed_length_records",
                    symbol="EUR-USD",
                    side="BID",
                    timeframe="1m",
                ),
                60,
                what="1m bars at the gateway",
                ignore=SCRAPE_ERRORS,
            )
            yield p
        finally:
            sup.shutdown(proc)


def test_supervisorctl_status_stop_start_restart(pipeline: Pipeline) -> None:
    status = pipeline.ctl("status")
    for name in (*SERVICES, "fake_upstream", "api"):
        assert f"barstream:{name}" in status.stdout
    # + the fake upstream, the HTTP API and the event listener
    assert status.stdout.count("RUNNING") == len(SERVICES) + 3, status.stdout

    events = pipeline.sup.events_port

    def state(st: str) -> bool:
        got = sample(
            scrape(events), "barstream_process_state", program="barstream:transformer", state=st
        )
        return got == 1

    done = pipeline.ctl("stop", "barstream:transformer")
    assert "stopped" in done.stdout, done.stdout + done.stderr
    assert "STOPPED" in pipeline.ctl("status", "barstream:transformer").stdout
    wait_for(
        lambda: state("STOPPED"), 10, what="listener: transformer STOPPED", ignore=SCRAPE_ERRORS
    )
    # a clean stop (SIGTERM) commits: the service's log says so and the exit was expected
    log = (pipeline.sup.log_dir / "transformer.log").read_text()
    assert "stopped: <Transformer" in log
    done = pipeline.ctl("start", "barstream:transformer")
    assert "started" in done.stdout, done.stdout + done.stderr
    wait_for(
        lambda: state("RUNNING"), 10, what="listener: transformer RUNNING", ignore=SCRAPE_ERRORS
    )
    done = pipeline.ctl("restart", "barstream:transformer")
    assert "started" in done.stdout, done.stdout + done.stderr
    s = scrape(events)
    running = sample(
        s,
        "barstream_process_transitions_total",
        program="barstream:transformer",
        to_state="RUNNING",
    )
    assert running is not None and running >= 3
    assert sample(
        s, "barstream_process_unexpected_exits_total", program="barstream:transformer"
    ) in (
        None,
        0,
    )
    # barstream ctl takes bare names: `status gateway` is supervisorctl's barstream:gateway
    sup = ["--var", str(pipeline.sup.var_dir), "--events-port", str(pipeline.sup.events_port)]
    done = cli("ctl", "-c", str(pipeline.config), *sup, "status", "gateway", "fake_upstream")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["barstream:gateway", "RUNNING"],
        ["barstream:fake_upstream", "RUNNING"],
    ], done.stdout


def test_status_reads_real_metrics(pipeline: Pipeline) -> None:
    done = cli(
        "status",
        "-c",
        str(pipeline.config),
        "--json",
        "--var",
        str(pipeline.sup.var_dir),
        "--events-port",
        str(pipeline.sup.events_port),
    )
    out = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert out["ok"] and out["faults"] == []
    services = out["services"]
    for name in SERVICES:
        assert services[name]["up"], name
        assert services[name]["supervisor_state"] == "RUNNING", name
    dl = services["downloader"]
    assert dl["gaps"] == {"EUR-USD/BID/fetch": 0}
    assert dl["streams"]["EUR-USD/BID/fetch"]["committed"] >= 9  # days since start_date
    assert services["transformer"]["held"] == []
    assert services["transformer"]["records_in"] > 0  # counted since its restart above
    m1 = services["resampler"]["streams"]["EUR-USD/BID/1m"]
    assert m1["committed"] > 1000 and m1["last_bar_ms"] >= 1_782_302_400_000  # 2026-06-24
    assert services["resampler"]["streams"]["EUR-USD/BID/1h"]["committed"] > 20
    text = cli("status", "-c", str(pipeline.config), "--var", str(pipeline.sup.var_dir))
    assert "faults: none" in text.stdout and "needs attention: none" in text.stdout, text.stdout
    assert len(text.stdout.splitlines()) <= 40
    (overview,) = [line for line in text.stdout.splitlines() if line.startswith("streams: ")]
    assert overview.startswith("streams: 1 symbol(s) (EUR-USD) × 1 side(s) (BID); timeframes ")
    tfs = overview.split("timeframes ")[1].split(";")[0].split()
    assert {"1m", "5m", "1h", "1d"} <= set(tfs), overview  # and the cascade's steps
    assert tfs == sorted(tfs, key=lambda tf: Timeframe.parse(tf).sort_key), overview
    full = cli("status", "-c", str(pipeline.config), "--var", str(pipeline.sup.var_dir), "--all")
    assert "faults: none" in full.stdout and "EUR-USD/BID/1m" in full.stdout
    # the transformer's upstream streams (…/fetch, from its lag gauge) are not its stores
    assert set(services["transformer"]["streams"]) == {"EUR-USD/BID/days"}
    assert set(services["transformer"]["upstream_lag"]) == {"EUR-USD/BID/fetch"}


def test_status_offline_reports_down_with_exit_1(tmp_path: Path) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    config = write_config(tmp_path / "c.toml", data)
    done = cli("status", "-c", str(config), "--json", "--var", str(tmp_path / "var"))
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert not out["ok"] and all(not s["up"] for s in out["services"].values())


# -- Prometheus ---------------------------------------------------------------------------


def ensure_prometheus() -> None:
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "prometheus"], env=env, check=False, timeout=900
        )
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if ci:
        pytest.fail("CI: prometheus/promtool missing and apt-get install prometheus failed")
    pytest.skip(
        "prometheus is not installed and cannot be (needs root + apt-get; set CI=true to fail)"
    )


@pytest.mark.timeout(300)  # ensure_prometheus may apt-get install it first
def test_promtool_accepts_every_metrics_endpoint(pipeline: Pipeline) -> None:
    ensure_prometheus()
    ports = {name: pipeline.metrics_port(name) for name in SERVICES}
    ports["supervisor_events"] = pipeline.sup.events_port
    problems = []
    for name, port in ports.items():
        done = subprocess.run(
            ["promtool", "check", "metrics"],
            input=scrape_text(port),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            problems.append(f"{name}: {done.stdout}{done.stderr}".strip())
    assert not problems, "\n".join(problems)


def test_every_endpoint_has_process_metrics_no_created_and_store_labels(
    pipeline: Pipeline,
) -> None:
    ports = {name: pipeline.metrics_port(name) for name in SERVICES}
    ports["supervisor_events"] = pipeline.sup.events_port
    for name, port in ports.items():
        text = scrape_text(port)
        samples = parse_metrics(text)
        for metric in ("process_resident_memory_bytes", "process_open_fds", "python_info"):
            assert sample(samples, metric) is not None, f"{name}: no {metric}"
        series = [line.split("{")[0].split(" ")[0] for line in text.splitlines()]
        created = [n for n in series if n.endswith("_created")]
        assert not created, f"{name}: {created}"
        if name == "supervisor_events":
            continue
        for metric in ("barstream_store_length_records", "barstream_committed_length_records"):
            got = samples.get(metric, [])
            assert got, f"{name}: no {metric}"
            for labels, _ in got:
                assert set(labels) == {"symbol", "side", "timeframe"}, f"{name}: {labels}"
                assert all(labels.values()), f"{name}: {labels}"
    aggregator = scrape(ports["aggregator"])
    assert (
        sample(
            aggregator,
            "barstream_feed_lag_records",
            symbol="EUR-USD",
            side="BID",
            timeframe="days",  # the transformer's stream: the timeframe label holds ``days``
        )
        is not None
    )


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


@pytest.mark.timeout(300)  # ensure_prometheus may apt-get install it first
def test_prometheus_scrapes_every_service(pipeline: Pipeline, tmp_path: Path) -> None:
    ensure_prometheus()
    targets = {name: pipeline.metrics_port(name) for name in SERVICES}
    conf = tmp_path / "prometheus.yml"
    lines = ["global:", "  scrape_interval: 1s", "scrape_configs:"]
    for name, port in targets.items():
        lines += [
            f"  - job_name: {name}",
            "    static_configs:",
            f"      - targets: ['127.0.0.1:{port}']",
        ]
    lines += [
        "  - job_name: supervisor_events",
        "    static_configs:",
        f"      - targets: ['127.0.0.1:{pipeline.sup.events_port}']",
    ]
    conf.write_text("\n".join(lines) + "\n")
    check = subprocess.run(
        ["promtool", "check", "config", str(conf)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        wait_for(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).status == 200
            ),
            60,
            what="prometheus ready",
            ignore=SCRAPE_ERRORS,
        )
        metric = {name: "barstream_records_in_total" for name in SERVICES}
        metric["downloader"] = "barstream_records_written_total"  # it has no upstream feed

        def values() -> dict[str, float] | None:
            out = {}
            for name in SERVICES:
                res = _query(port, f'{metric[name]}{{job="{name}"}}')
                if not res:
                    return None
                out[name] = float(res[0]["value"][1])
            return out

        first = wait_for(
            values, 60, what="every service scraped", every_s=0.5, ignore=SCRAPE_ERRORS
        )

        def all_up() -> bool:  # each job is scraped on its own schedule: wait for all
            up = _query(port, "up")
            return {r["metric"]["job"] for r in up if r["value"][1] == "1"} >= {
                *SERVICES,
                "supervisor_events",
            }

        wait_for(
            all_up,
            30,
            what="every job up, the supervisor event listener included",
            every_s=0.5,
            ignore=SCRAPE_ERRORS,
        )

        def rose() -> bool:
            now = values()
            return now is not None and all(now[n] > first[n] for n in SERVICES)

        wait_for(
            rose,
            60,
            what=f"records rising in every service (first {first})",
            every_s=1.0,
            ignore=SCRAPE_ERRORS,
        )
        states = _query(port, 'barstream_process_state{state="RUNNING"} == 1')
        assert {r["metric"]["program"] for r in states} >= {f"barstream:{n}" for n in SERVICES}
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


# -- rebuild (runs last in this module: it replaces the stores) -------------------------


@pytest.mark.timeout(150)  # the rebuild may take up to 120 s (asserted below)
def test_rebuild_from_raw_cache_equals_live_stores(pipeline: Pipeline) -> None:
    data_dir = Path(pipeline.data["pipeline"]["data_dir"])
    began = time.monotonic()
    done = cli(
        "rebuild",
        "-c",
        str(pipeline.config),
        "-q",
        "--var",
        str(pipeline.sup.var_dir),
        "--events-port",
        str(pipeline.sup.events_port),
        timeout_s=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bars/s" in done.stderr and "restarted" in done.stderr, done.stderr
    aside = sorted(data_dir.glob(".aside-*"))
    assert len(aside) == 1
    for service, name in (("aggregator", "1m"), ("resampler", "1m"), ("features", "1m.ops")):
        rel = Path(service) / "EUR-USD" / "BID" / f"{name}.bars"
        with (
            Store.open(data_dir / rel, writable=False) as new,
            Store.open(aside[0] / rel, writable=False) as old,
        ):
            rebuilt, live = new.snapshot(), old.snapshot()
        # the rebuild holds the cached (final) days; the live store also the current day
        assert 9 * 1000 < len(rebuilt) <= len(live), (service, len(rebuilt), len(live))
        # bytes: a feature store's records hold NaN (warm-up), which no array equals
        assert rebuilt.tobytes() == live[: len(rebuilt)].tobytes(), service
    verify = cli("verify", "-c", str(pipeline.config), "-q")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # the services are back and catch up with the live day
    states = pipeline.sup.wait_running(list(SERVICES), 30)
    assert all(s == "RUNNING" for s in states.values()), states
    assert time.monotonic() - began < 120
