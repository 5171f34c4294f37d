"""The chart page in a real headless Chromium (Debian's ``chromium``, installed by
scripts/ensure-debs.sh when missing) against ``barstream serve`` over the running offline
demo (supervisord, the fake upstream, every service, on private endpoints and free ports):

- the page loads with the browser's network limited to 127.0.0.1 (every request to another
  host is aborted, and the page makes none);
- it draws the candles: a screenshot is saved (the test's tmp dir and
  var/test-artifacts/chart.png) and the chart's canvases hold many distinct colours, the
  up and down candle colours among them;
- once the demo clock advances (the gateway's last 1m bar is a newer minute), the page's
  last bar — #last-time, and #last-close formatted as the page formats prices — equals
  the gateway's last 1m bar (``GatewayClient.history(last=1)``), delivered by the SSE stream.

Skips only when chromium is not installed and cannot be (not root, no apt-get).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from barstream.client import GatewayClient
from barstream.shared import config
from barstream.supervise import Supervisor, service_programs
from tests.support.ops import REPO, free_port, pipeline_config, write_config
from tests.support.wait import wait_for

CHROMIUM = Path("/usr/bin/chromium")
#: Chromium as root in a closed network: no sandbox (root), no GPU, none of its own
#: connections (updates, sync, safe browsing) — the only requests are the page's.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOPIC = ("EUR-USD", "BID", "1m")
ARTIFACT = REPO / "var" / "test-artifacts" / "chart.png"
#: The page's up and down candle colours (web/chart.js UP, DOWN).
UP_RGB = (0x26, 0xA6, 0x9A)
DOWN_RGB = (0xEF, 0x53, 0x50)

pytestmark = pytest.mark.slow


@dataclass
class Demo:
    sup: Supervisor
    data: dict[str, Any]
    config: Path
    run_dir: Path

    def gateway(self) -> GatewayClient:
        return GatewayClient.from_config(config.load(self.config), timeout_s=5.0)


def price_text(close: float) -> str:
    """A price as web/series.js formatPrice shows it: 5 decimals below 20, 3 below 1000,
    else 2 — rounded as JavaScript's toFixed does (half away from zero, on the exact
    binary value)."""
    p = abs(close)
    decimals = 5 if p < 20 else 3 if p < 1000 else 2
    return format(Decimal(close).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP), "f")


def iso_minute(ts_ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts_ms / 1000))


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        subprocess.run(["bash", str(REPO / "scripts" / "ensure-debs.sh")], timeout=600, check=False)
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Debian's chromium is not installed at {CHROMIUM} and could not be installed "
            "here (needs root + apt-get: apt-get install chromium)"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    with tempfile.TemporaryDirectory(prefix="bs-chart-", dir="/tmp") as d:
        run_dir = Path(d)
        data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
        path = write_config(run_dir / "pipeline.toml", data)
        sup = Supervisor(path, run_dir / "var", demo=True, events_port=free_port())
        proc = sup.start(foreground=True)
        try:
            states = sup.wait_running(service_programs(demo=True), 30)
            assert all(s == "RUNNING" for s in states.values()), states
            demo = Demo(sup, data, path, run_dir)
            with demo.gateway() as gw:
                wait_for(
                    lambda: len(gw.history(TOPIC[0], TOPIC[2], side=TOPIC[1], last=1)),
                    90,
                    what="1m bars at the gateway",
                    ignore=(TimeoutError,),
                    every_s=0.2,
                )
            yield demo
        finally:
            sup.shutdown(proc)


@pytest.fixture(scope="module")
def api(demo: Demo) -> Iterator[str]:
    """``barstream serve`` over the demo's gateway on a free port; yields its base URL."""
    port = free_port()
    data = {**demo.data, "api": {**demo.data.get("api", {}), "host": "127.0.0.1", "port": port}}
    path = write_config(demo.run_dir / "serve.toml", data)
    log_path = demo.run_dir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "barstream", "serve", "-c", str(path)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"barstream serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    try:
        wait_for(
            healthy,
            60,
            what=f"barstream serve to answer {base}/healthz",
            ignore=(OSError,),
            every_s=0.1,
            on_timeout=lambda: log_path.read_text()[-3000:],
        )
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


CANVAS_COLOURS_JS = """
() => {
  const seen = new Set();
  for (const c of document.querySelectorAll("#chart canvas")) {
    if (!c.width || !c.height) continue;
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] === 0) continue;
      seen.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
    }
  }
  return [...seen];
}
"""

LAST_BAR_JS = """
() => ({
  ts_ms: Number(document.getElementById("last-time").dataset.tsMs || 0),
  time: document.getElementById("last-time").textContent,
  close_text: document.getElementById("last-close").textContent,
  close: Number(document.getElementById("last-close").dataset.close),
  seq: Number(document.body.dataset.lastSeq || -1),
  error: document.getElementById("error").hidden ? "" : document.getElementById("error").textContent,
})
"""


@pytest.mark.timeout(300)
def test_the_chart_draws_the_candles_offline_and_follows_the_gateways_last_bar(
    chromium: Path, demo: Demo, api: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Route, sync_playwright

    aborted: list[str] = []
    page_errors: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            aborted.append(route.request.url)
            route.abort()

    symbol, side, timeframe = TOPIC
    with sync_playwright() as pw, demo.gateway() as gw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.route("**/*", only_loopback)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(f"{api}/?topic={symbol}/{side}/{timeframe}", timeout=30_000)
            page.wait_for_selector("body[data-ready='1']", state="attached", timeout=30_000)
            page.wait_for_selector("body[data-last-seq]", state="attached", timeout=30_000)
            first = page.evaluate(LAST_BAR_JS)
            assert first["error"] == "", first

            # the candles are drawn: a screenshot kept, many colours on the canvases
            shot = tmp_path / "chart.png"
            page.screenshot(path=str(shot))
            ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, ARTIFACT)
            colours = set(page.evaluate(CANVAS_COLOURS_JS))
            assert len(colours) > 50, f"{len(colours)} distinct colours on the chart's canvases"
            for name, (r, g, b) in (("up", UP_RGB), ("down", DOWN_RGB)):
                assert (r << 16) | (g << 8) | b in colours, f"no {name} candle colour drawn"

            # the demo clock advances: the gateway's last 1m bar is a newer minute …
            start_ms = int(gw.history(symbol, timeframe, side=side, last=1)["ts_ms"][-1])
            wait_for(
                lambda: (
                    int(gw.history(symbol, timeframe, side=side, last=1)["ts_ms"][-1]) > start_ms
                ),
                60,
                what="the demo clock to open a new minute at the gateway",
                every_s=0.2,
            )

            # … and the page, live from the stream, shows that bar: time and close
            def same_last_bar() -> bool:
                bar = gw.history(symbol, timeframe, side=side, last=1)[-1]
                shown = page.evaluate(LAST_BAR_JS)
                assert shown["error"] == "", shown
                return bool(
                    shown["ts_ms"] == int(bar["ts_ms"])
                    and shown["time"] == iso_minute(int(bar["ts_ms"]))
                    and shown["close"] == float(bar["close"])
                    and shown["close_text"] == price_text(float(bar["close"]))
                )

            wait_for(
                same_last_bar,
                30,
                what="the page's last bar to equal the gateway's last 1m bar",
                every_s=0.1,
                on_timeout=lambda: (
                    f"page {page.evaluate(LAST_BAR_JS)}, gateway "
                    f"{gw.history(symbol, timeframe, side=side, last=1)[-1]}"
                ),
            )
            last = page.evaluate(LAST_BAR_JS)
            assert last["ts_ms"] > first["ts_ms"] and last["seq"] > first["seq"], (first, last)
        finally:
            browser.close()
    assert aborted == [], f"the page asked other hosts than 127.0.0.1: {aborted}"
    assert page_errors == [], page_errors
