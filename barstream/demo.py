"""``barstream demo``: the whole pipeline under supervisord, with a live screen.

Offline (default): config/demo.toml, the fake Dukascopy upstream (``barstream:fake_upstream``)
autostarted with its simulated clock; the demo's data directory starts empty each run unless
``--keep``. ``--live``: config/live.toml against the real API, data kept between runs.

Waits until 1m bars reach the resampler, then redraws a screen every second: the services
(from /metrics and supervisord) and the last 1m bars of the first symbol (read-only from the
resampler's store). Ctrl-C (or ``--duration`` seconds) stops supervisord, which stops every
service with SIGTERM (each commits and exits).

Before anything starts (or the data is reset), every TCP port of the run is checked free
(``barstream.ports``): a taken one exits 2 naming its configuration key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType
from typing import TextIO

import numpy as np

from barstream import configs, paths, ports, status, status_view
from barstream.export import num
from barstream.shared.config import Config, connect_host
from barstream.shared.errors import (
    EXIT_ERROR,
    EXIT_USAGE,
    BarstreamError,
    StoreError,
    SupervisorError,
)
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.store import Store
from barstream.supervise import Supervisor, service_programs

WAIT_BARS_S = 180.0
BARS_SHOWN = 12


class _Stop(Exception):
    pass


def reset_data(cfg: Config) -> Path:
    """Empty the demo's data directory (only ever one inside the home's var/)."""
    root = configs.data_root(cfg).resolve()
    var = (paths.home() / "var").resolve()
    if var not in root.parents:
        raise BarstreamError(
            f"{root}: not under {var}; the demo only resets its own data (use --keep)"
        )
    shutil.rmtree(root, ignore_errors=True)
    return root


def last_bars(cfg: Config, n: int) -> tuple[str, np.ndarray]:
    symbol, side = cfg.streams()[0]
    path = configs.data_root(cfg) / "resampler" / symbol / side / "1m.bars"
    key = f"{symbol}/{side}/1m"
    try:
        with Store.open(path, writable=False) as store:
            length = store.refresh()
            return key, store.snapshot(max(0, length - n))
    except StoreError:
        return key, np.zeros(0)


def sim_now(cfg: Config) -> str:
    url = f"{cfg.downloader.base_url.rstrip('/')}/_control/clock"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            ms = int(json.loads(resp.read())["sim_now_ms"])
    except (OSError, ValueError, KeyError):
        return "?"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def screen(cfg: Config, *, live: bool, elapsed_s: float, sup: Supervisor | None = None) -> str:
    statuses = status.collect(cfg, sup)
    key, bars = last_bars(cfg, BARS_SHOWN)
    head = (
        f"barstream demo — {'REAL Dukascopy API' if live else 'fake upstream'}"
        + ("" if live else f", simulated now {sim_now(cfg)} UTC ({cfg.fake_upstream.speed:g}x)")
        + f" — running {elapsed_s:.0f}s — Ctrl-C stops"
    )
    lines = [head, "", status_view.render(statuses, streams=False), "", f"last 1m bars of {key}:"]
    lines.append(
        f"  {'open time (UTC)':<17} {'open':>11} {'high':>11} {'low':>11} "
        f"{'close':>11} {'volume':>10}"
    )
    for rec in bars:
        when = dt.datetime.fromtimestamp(int(rec["ts_ms"]) / 1000, dt.UTC)
        mark = " ~ (forming)" if int(rec["flags"]) & FLAG_PROVISIONAL else ""
        lines.append(
            f"  {when:%Y-%m-%d %H:%M} {num(rec['open']):>11} {num(rec['high']):>11} "
            f"{num(rec['low']):>11} {num(rec['close']):>11} {num(rec['volume']):>10}{mark}"
        )
    return "\n".join(lines)


def wait_for_bars(cfg: Config, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(last_bars(cfg, 1)[1]):
            return True
        time.sleep(0.5)
    return False


def run(
    config_path: Path,
    *,
    live: bool,
    keep: bool,
    duration_s: float | None,
    var_dir: Path,
    events_port: int,
    out: TextIO = sys.stdout,
) -> int:
    cfg = configs.load(config_path)
    sup = Supervisor(
        config_path, var_dir, demo=not live, events_port=ports.events_port(cfg, events_port)
    )
    try:
        sup.check_not_running()
    except SupervisorError as e:
        print(f"demo: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not ports.check_free(cfg, fake=not live, events_port=sup.events_port, prefix="demo"):
        return EXIT_USAGE  # before anything starts or the data is reset
    if not live and not keep:
        root = reset_data(cfg)
        print(f"demo: starting from an empty {root}", file=sys.stderr)

    # Ctrl-C and SIGTERM end the screen loop; supervisord (its own session) is stopped below.
    def _raise(_sig: int, _frame: FrameType | None) -> None:
        raise _Stop

    old = {s: signal.signal(s, _raise) for s in (signal.SIGINT, signal.SIGTERM)}
    proc = None
    code = 0
    began = time.monotonic()
    try:
        print(f"demo: supervisord -c {sup.conf} (logs in {sup.log_dir})", file=sys.stderr)
        proc = sup.start(foreground=True)
        states = sup.wait_running(service_programs(demo=not live), 30.0)
        bad = {n: s for n, s in states.items() if s != "RUNNING"}
        if bad:
            print(f"demo: not running: {bad}; see {sup.log_dir}", file=sys.stderr)
            return 1
        print("demo: every service is running; waiting for 1m bars …", file=sys.stderr)
        api_host = connect_host(cfg.api.host)
        print(
            f"demo: live chart and HTTP API on http://{api_host}:{cfg.api.port}/ "
            f"(API: /v1/bars/EUR-USD/BID/1m, /openapi.json)",
            file=sys.stderr,
        )
        if not wait_for_bars(cfg, WAIT_BARS_S):
            print(screen(cfg, live=live, elapsed_s=time.monotonic() - began, sup=sup), file=out)
            print(f"demo: no 1m bars after {WAIT_BARS_S:.0f}s; see {sup.log_dir}", file=sys.stderr)
            return 1
        tty = out.isatty()
        next_plain = 0.0
        while duration_s is None or time.monotonic() - began < duration_s:
            text = screen(cfg, live=live, elapsed_s=time.monotonic() - began, sup=sup)
            if tty:
                out.write("\x1b[H\x1b[2J" + text + "\n")
                out.flush()
            elif time.monotonic() >= next_plain:
                out.write(text + "\n\n")
                out.flush()
                next_plain = time.monotonic() + 10.0
            if proc is not None and proc.poll() is not None:
                print(f"demo: supervisord exited {proc.returncode}", file=sys.stderr)
                return 1
            time.sleep(1.0)
        out.write(screen(cfg, live=live, elapsed_s=time.monotonic() - began, sup=sup) + "\n")
    except _Stop:
        print("\ndemo: stopping …", file=sys.stderr)
    except SupervisorError as e:
        print(f"demo: {e}", file=sys.stderr)
        code = 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc is not None:
            with contextlib.suppress(SupervisorError):
                # a second Ctrl-C during the stop must not leave orphans: ignore it
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                sup.shutdown(proc)
                signal.signal(signal.SIGINT, old[signal.SIGINT])
            print("demo: stopped; every service committed and exited", file=sys.stderr)
    return code
