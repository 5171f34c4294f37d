"""The pipeline the HTTP API tests share (tests/integration/http_api): the offline demo
under the REAL supervisord (fake upstream, every service, ``barstream serve`` as
``barstream:api``) on private endpoints and free ports, resampler timeframes 5m, 1h, 1d,
the gateway answering at most ``GATEWAY_PAGE`` bars per request (so a 1m history is several
gateway pages, streamed page by page); a second ``barstream serve`` (``python -m barstream
serve -c FILE``) with a small ``api.max_records`` and ``api.max_streams`` for the 413s and
503s; and a live SSE stream (``Watcher``) read for the whole run."""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from barstream.client import GatewayClient
from barstream.shared import config as config_mod
from barstream.supervise import Supervisor, default_conf, service_programs
from tests.support import api as h
from tests.support.ops import REPO, cli, free_port, pipeline_config, write_config
from tests.support.wait import wait_for

SYMBOL, SIDE = "EUR-USD", "BID"
TFS = ("1m", "1h", "1d")
FORMATS = ("json", "ndjson", "csv", "mt4", "arrow", "parquet")
MEDIA = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "mt4": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
#: gateway.max_request_records: a 1m history is several pages.
GATEWAY_PAGE = 4000
#: api.max_records of the second server.
SMALL_MAX = 1000
#: The test config's api timeouts (short, so the slow-client tests are quick).
HEADER_TIMEOUT_S, SEND_TIMEOUT_S = 2.0, 3.0


@dataclass
class Demo:
    sup: Supervisor
    config: Path
    data: dict[str, Any]
    base: str
    port: int
    small: str
    small_port: int
    watcher: h.Watcher
    http: httpx.Client

    def gateway(self) -> GatewayClient:
        return GatewayClient.from_config(config_mod.load(self.config), timeout_s=10.0)

    def history(self, tf: str, **kw: Any) -> np.ndarray:
        with self.gateway() as gw:
            return gw.history(SYMBOL, tf, side=SIDE, **kw)

    def info(self, tf: str) -> Any:
        with self.gateway() as gw:
            (t,) = [t for t in gw.list_topics() if t.topic == f"{SYMBOL}/{SIDE}/{tf}"]
            return t

    def bars_url(self, tf: str, base: str | None = None) -> str:
        return f"{base or self.base}/v1/bars/{SYMBOL}/{SIDE}/{tf}"

    def get(self, url: str, **params: Any) -> httpx.Response:
        return self.http.get(url, params=params)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(default_conf()), *args],
            env=self.sup.env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``barstream ctl ARGS`` (bare service names) for this pipeline."""
        var = ["--var", str(self.sup.var_dir), "--events-port", str(self.sup.events_port)]
        return cli("ctl", "-c", str(self.config), *var, *args)

    def metric(self, name: str, base: str | None = None) -> float:
        text = self.http.get(f"{base or self.base}/metrics").text
        (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
        return float(line.split()[1])


def _healthy(base: str) -> bool:
    return httpx.get(f"{base}/healthz", timeout=5).status_code == 200


@contextlib.contextmanager
def running_demo() -> Iterator[Demo]:
    """The demo pipeline, the second server and the module's watcher, torn down after."""
    with tempfile.TemporaryDirectory(prefix="bs-api-", dir="/tmp") as d:
        run_dir = Path(d)
        data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
        data["api"] |= {
            "host": "127.0.0.1",
            "keepalive_s": 1.0,
            "header_timeout_s": HEADER_TIMEOUT_S,
            "send_timeout_s": SEND_TIMEOUT_S,
        }
        data["gateway"]["max_request_records"] = GATEWAY_PAGE
        path = write_config(run_dir / "pipeline.toml", data)
        small_port = free_port()
        small_cfg = {**data, "api": {**data["api"], "port": small_port}}
        small_cfg["api"] |= {"max_records": SMALL_MAX, "max_streams": 2}
        small_path = write_config(run_dir / "small.toml", small_cfg)
        sup = Supervisor(path, run_dir / "var", demo=True, events_port=free_port())
        proc = sup.start(foreground=True)
        small: subprocess.Popen[bytes] | None = None
        watcher: h.Watcher | None = None
        try:
            states = sup.wait_running(service_programs(demo=True), 30)
            assert all(s == "RUNNING" for s in states.values()), states
            port = data["api"]["port"]
            base, small_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{small_port}"
            with (run_dir / "small.log").open("wb") as log:
                small = subprocess.Popen(
                    [sys.executable, "-m", "barstream", "serve", "-c", str(small_path)],
                    cwd=REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            for b in (base, small_base):
                wait_for(
                    functools.partial(_healthy, b),
                    60,
                    what=f"{b}/healthz",
                    ignore=(httpx.HTTPError,),
                )
            gw = GatewayClient.from_config(config_mod.load(path), timeout_s=10.0)
            with gw:

                def ready() -> bool:
                    counts = {t.topic.split("/")[2]: t.count for t in gw.list_topics()}
                    return counts.get("1m", 0) > 2 * GATEWAY_PAGE and counts.get("1d", 0) >= 5

                wait_for(ready, 120, what="the demo's backfill at the gateway", every_s=0.5)
            watcher = h.Watcher(f"{base}/v1/stream/{SYMBOL}/{SIDE}/1m?history=20")
            watcher.wait_more(1, 20, "(history)")
            with httpx.Client(timeout=30) as http:
                yield Demo(sup, path, data, base, port, small_base, small_port, watcher, http)
        finally:
            if watcher is not None:
                watcher.stop()
            if small is not None:
                small.terminate()
                small.wait(15)
            sup.shutdown(proc)


def closed_ranges(demo: Demo) -> dict[str, tuple[int, int, np.ndarray]]:
    """Per timeframe a closed range — first bar … before the last (provisional) one — and
    the gateway's records of it: (start_ms, end_ms, records)."""
    out = {}
    for tf in TFS:
        info = demo.info(tf)
        start, end = info.first_ms, info.last_ms
        out[tf] = (start, end, demo.history(tf, start=start, end=end))
        assert len(out[tf][2]) >= 4, (tf, len(out[tf][2]))
    return out
