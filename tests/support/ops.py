"""Helpers of the operations tests: a small pipeline configuration on private endpoints and
free ports, scraping /metrics with a timeout, running the CLI as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from barstream import tomlw
from barstream.shared.config import SERVICES, UPSTREAM_OF, section
from barstream.status import Samples, parse_metrics

REPO = Path(__file__).resolve().parents[2]


#: Ports free_port() handed out in this process: the kernel may give a port that was
#: just released again, so two keys of one configuration could get the same one (a flaky
#: "two keys on one port" in CI).
_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now and not handed out before by this process."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    raise RuntimeError("no fresh free port after 1000 tries")


def pipeline_config(
    run_dir: Path,
    data_dir: Path,
    *,
    fake_port: int,
    start_date: str = "2026-06-15",
    sim_start: str = "2026-06-24T12:00:00",
    speed: float = 60.0,
    symbols: tuple[str, ...] = ("EUR-USD",),
) -> dict[str, Any]:
    """A pipeline on ipc endpoints in ``run_dir`` and free metrics ports, its downloader
    pointed at a fake upstream on ``fake_port`` (live polls every 0.5 s)."""
    import datetime as dt

    data: dict[str, Any] = {
        "pipeline": {
            "data_dir": str(data_dir),
            "symbols": list(symbols),
            "sides": ["BID"],
            "start_date": dt.date.fromisoformat(start_date),
            "commit_interval_s": 0.05,
        },
        "downloader": {
            "base_url": f"http://127.0.0.1:{fake_port}",
            "requests_per_second": 200.0,
            "burst": 20,
            "timeout_s": 5.0,
            "live_poll_interval_s": 0.5,
            "gap_retry_interval_s": 5.0,
        },
        "resampler": {"timeframes": ["5m", "1h", "1d"]},
        "gateway": {
            "publish": f"ipc://{run_dir}/gw.pub",
            "requests": f"ipc://{run_dir}/gw.req",
        },
        "fake_upstream": {"port": fake_port, "speed": speed, "seed": 1, "start": sim_start},
        "api": {"port": free_port()},
    }
    for name in SERVICES:
        ep: dict[str, Any] = {"feed": f"ipc://{run_dir}/{name}.feed", "metrics_port": free_port()}
        if name in UPSTREAM_OF:
            ep["upstream"] = f"ipc://{run_dir}/{UPSTREAM_OF[name]}.feed"
        data.setdefault(section(name), {})["endpoints"] = ep
    data["gateway"]["features_upstream"] = f"ipc://{run_dir}/features.feed"
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomlw.dumps(data))
    return path


def scrape(port: int, timeout_s: float = 2.0) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        return parse_metrics(r.read().decode())


def scrape_text(port: int, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
        text: str = r.read().decode()
        return text


#: What probing a service that is still starting raises (connection refused or reset, a
#: metrics page cut short): ``wait_for(..., ignore=SCRAPE_ERRORS)`` keeps polling.
SCRAPE_ERRORS = (OSError, ValueError)


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    for lbl, value in samples.get(name, []):
        if all(lbl.get(k) == v for k, v in labels.items()):
            return value
    return None


def cli(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """``python -m barstream ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "barstream", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
