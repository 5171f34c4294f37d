"""Every command and the metrics agree on a held stream and a gap (issue 16, the health
model). A raw cache with one bad day (its ``times`` go backwards) and one day missing is
rebuilt by the real ``barstream rebuild``; then:

- the downloader's and transformer's /metrics (their real registries, served) say
  ``degraded`` with the reasons ``gap`` / ``held``; ``barstream status`` (text and --json)
  says the same and exits 1;
- a real Prometheus scraping them with the shipped rules (deploy/alerts.yml) fires
  ``BarstreamStreamHeld`` and ``BarstreamGapDays`` (evaluated by Prometheus itself);
- ``barstream export`` of a range the hold cuts short warns on stderr naming the held day
  and exits 1; a range before it exits 0 without a word; ``barstream sql`` over the held
  stream warns on stderr; ``barstream tail`` against a real gateway on those stores warns.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.service import Downloader
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.service import Transformer
from barstream.shared import config as config_mod
from tests.integration.test_missing_history import BAD, FIRST, LAST, make_cache
from tests.integration.test_ops_pipeline import ensure_prometheus
from tests.integration.test_ops_stall import ALERTS, alert_states, api
from tests.support.ops import (
    REPO,
    SCRAPE_ERRORS,
    cli,
    free_port,
    pipeline_config,
    sample,
    scrape,
    write_config,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

HELD_LINE = "HELD EUR-USD/BID 2024-03-06: held by a bad payload: field times[10]"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A data directory rebuilt from the cache with the bad day and the hole, and its
    configuration file."""
    tmp = tmp_path_factory.mktemp("health")
    clock = SimClock(day_start_ms(dt.date(2024, 4, 1)), speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=None) as fake:
        data = tmp / "data"
        make_cache(data / "raw")
        (tmp / "run").mkdir()
        cfg = pipeline_config(tmp / "run", data, fake_port=fake.port, start_date=str(FIRST))
        cfg["downloader"].update(base_url=fake.url, end_date=LAST, cache_only=True, max_retries=1)
        config = write_config(tmp / "c.toml", cfg)
        done = cli("rebuild", "-c", str(config), "-q", "--var", str(tmp / "var"))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "HELD    EUR-USD/BID 2024-03-06" in done.stdout, done.stdout
        yield config, cfg


@pytest.fixture(scope="module")
def serving(rebuilt: tuple[Path, dict[str, Any]]) -> Iterator[dict[str, int]]:
    """The downloader and the transformer on those stores, their /metrics served on the
    configured ports (the other services are down)."""
    config, cfg = rebuilt
    loaded = config_mod.load(config)
    downloader = Downloader(loaded, serve_metrics=False)
    transformer = Transformer(loaded, serve_metrics=False)
    try:
        ports = {
            "downloader": downloader.metrics.serve(cfg["downloader"]["endpoints"]["metrics_port"]),
            "transformer": transformer.metrics.serve(
                cfg["transformer"]["endpoints"]["metrics_port"]
            ),
        }
        yield ports
    finally:
        for service in (downloader, transformer):
            service.metrics.close()
            service.stores.close()
            service.ctx.destroy(linger=0)
        transformer.helper.close()


def test_metrics_and_status_say_degraded_with_the_reason(
    rebuilt: tuple[Path, dict[str, Any]], serving: dict[str, int]
) -> None:
    config, _ = rebuilt
    for name, reason in (("downloader", "gap"), ("transformer", "held")):
        got = scrape(serving[name])
        assert sample(got, "barstream_health_state", state="degraded") == 1.0, name
        assert sample(got, "barstream_health_state", state="healthy") == 0.0, name
        assert sample(got, "barstream_health_reason", reason=reason) == 1.0, name
        others = [lbl["reason"] for lbl, v in got["barstream_health_reason"] if v]
        assert others == [reason], (name, others)
    two = ("--service", "downloader", "--service", "transformer")
    shown = cli("status", "-c", str(config), "--json", *two)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    st = json.loads(shown.stdout)
    assert st["health"] == "degraded"
    assert st["unhealthy"] == {"downloader": ["gap"], "transformer": ["held"]}
    assert st["services"]["transformer"]["held"] == ["EUR-USD/BID/fetch"]
    assert {m["kind"] for m in st["missing"]} == {"held", "gap"}
    text = cli("status", "-c", str(config), *two)
    assert text.returncode == 1, text.stdout + text.stderr
    assert "health: degraded: downloader degraded (gap); transformer degraded (held)" in (
        text.stdout
    ), text.stdout
    assert HELD_LINE.replace("HELD ", "HELD    ") in text.stdout
    every = cli("status", "-c", str(config), "--json")  # the three others are down: failed
    assert every.returncode == 1
    st = json.loads(every.stdout)
    assert st["health"] == "failed" and st["unhealthy"]["gateway"] == ["down"], st["unhealthy"]


@pytest.mark.timeout(300)  # ensure_prometheus may apt-get install it first
def test_prometheus_fires_the_held_and_gap_alerts(tmp_path: Path, serving: dict[str, int]) -> None:
    ensure_prometheus()
    conf = tmp_path / "prometheus.yml"
    targets = "".join(
        f"      - targets: ['127.0.0.1:{port}']\n        labels: {{service: {name}}}\n"
        for name, port in serving.items()
    )
    conf.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{ALERTS}']\n"
        "scrape_configs:\n  - job_name: barstream\n    static_configs:\n" + targets
    )
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        prom = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={conf}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
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

        def firing() -> dict[str, set[str]]:
            return {
                name: states for name, states in alert_states(port).items() if "firing" in states
            }

        wanted = {"BarstreamStreamHeld", "BarstreamGapDays"}
        wait_for(
            lambda: wanted <= set(firing()),
            60,
            what=f"{wanted} firing (alerts: {alert_states(port)})",
            every_s=1.0,
            ignore=SCRAPE_ERRORS,
        )
        alerts = api(port, "alerts")["alerts"]
        held = [a for a in alerts if a["labels"]["alertname"] == "BarstreamStreamHeld"]
        assert [a["labels"]["service"] for a in held] == ["transformer"], held
        assert held[0]["labels"]["symbol"] == "EUR-USD" and held[0]["labels"]["side"] == "BID"
        assert "held by a bad payload" in held[0]["annotations"]["summary"]
        gap = [a for a in alerts if a["labels"]["alertname"] == "BarstreamGapDays"]
        assert [a["labels"]["service"] for a in gap] == ["downloader"], gap
        assert "BarstreamServiceFailed" not in firing()  # both answer
        q = "barstream_health_state{state='degraded'} == 1"
        got = api(port, f"query?query={urllib.parse.quote(q)}")["result"]
        assert sorted(r["metric"]["service"] for r in got) == ["downloader", "transformer"]
    finally:
        prom.terminate()
        try:
            prom.wait(30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def test_export_of_a_range_the_hold_cuts_short_warns_and_exits_1(
    rebuilt: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    config, _ = rebuilt
    c = ("-c", str(config))
    out = tmp_path / "all.csv"
    done = cli("export", "EUR-USD", "1h", *c, "-o", str(out))
    assert done.returncode == 1, done.stderr
    warning = [x for x in done.stderr.splitlines() if "WARNING" in x]
    assert warning and warning[0].startswith(
        "export: WARNING: EUR-USD/BID/1h lacks history: " + HELD_LINE
    ), done.stderr
    assert "export: INCOMPLETE: the range is cut short" in done.stderr
    assert "barstream backfill -c" in done.stderr and "--refetch --start 2024-03-06" in done.stderr
    assert out.read_text().count("\n") > 1  # what is stored is still written
    before = cli("export", "EUR-USD", "1h", *c, "--end", str(BAD), "-o", str(tmp_path / "b.csv"))
    assert before.returncode == 0 and "WARNING" not in before.stderr, before.stderr
    into = cli("export", "EUR-USD", "1h", *c, "--start", "2024-03-05", "--end", "2024-03-06T12:00")
    assert into.returncode == 1 and HELD_LINE in into.stderr, into.stderr
    ask = cli("export", "EUR-USD", "1h", *c, "--side", "ASK")  # another stream: not named
    assert HELD_LINE not in ask.stderr


def test_sql_over_the_held_stream_warns(rebuilt: tuple[Path, dict[str, Any]]) -> None:
    config, _ = rebuilt
    q = "SELECT count(*) AS n FROM bars('EUR-USD', 'BID', '1h')"
    done = cli("sql", q, "-c", str(config), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["n"] > 0  # ndjson
    assert (
        "sql: WARNING: bars('EUR-USD', 'BID', '1h') lacks history: " + HELD_LINE in done.stderr
    ), done.stderr
    early = cli(
        "sql", "SELECT count(*) FROM bars('EUR-USD','BID','1h','2024-03-04','2024-03-06')",
        "-c", str(config),
    )  # fmt: skip
    assert early.returncode == 0 and "WARNING" not in early.stderr, early.stderr


@pytest.mark.timeout(120)
def test_tail_of_the_held_stream_warns(
    rebuilt: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    config, _ = rebuilt
    with (tmp_path / "gateway.log").open("wb") as log:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "barstream.services.gateway", "-c", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    err = tmp_path / "tail.err"
    tail: subprocess.Popen[bytes] | None = None
    try:
        with err.open("wb") as sink:
            tail = subprocess.Popen(
                [sys.executable, "-m", "barstream", "tail", "EUR-USD", "1h", "-c", str(config)],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=sink,
            )
        wait_for(
            lambda: "WARNING" in err.read_text() or tail is None or tail.poll() is not None,
            60,
            what=f"tail's warning (stderr so far: {err.read_text()!r})",
        )
        lines = err.read_text().splitlines()
        assert any(x.startswith("tail: following gateway") for x in lines), lines
        warned = [x for x in lines if "WARNING" in x]
        assert warned and warned[0].startswith(
            "tail: WARNING: EUR-USD/BID/1h lacks history: " + HELD_LINE
        ), lines
    finally:
        for proc in (tail, gateway):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
