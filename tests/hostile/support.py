"""Helpers of the hostile-world socket tests: a service as a real process on private
ipc endpoints and free metrics ports, and a hand-rolled upstream that says anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from barstream import tomlw
from barstream.shared import protocol as p
from barstream.shared.config import SERVICES, UPSTREAM_OF, section
from barstream.shared.record import KIND_BARS, RECORD_DTYPE
from barstream.shared.timeframe import MINUTE_MS
from tests.support.ops import REPO, free_port

#: 2023-11-14 22:14 UTC: three minutes from here stay in one UTC day.
T0 = 1_700_000_040_000 // MINUTE_MS * MINUTE_MS


def bars(n: int, start: int = 0, src: int | None = None) -> np.ndarray:
    """``n`` valid 1m bars from T0 + ``start`` minutes (``src``: one day version's
    src_offset for every record, else one per record)."""
    r = np.zeros(n, RECORD_DTYPE)
    r["ts_ms"] = T0 + (np.arange(n) + start) * MINUTE_MS
    r["open"] = r["high"] = r["low"] = r["close"] = 1.0 + (np.arange(n) + start) / 1000
    r["volume"] = 1.0
    r["src_offset"] = np.arange(n) + start if src is None else src
    r["src_count"] = 1
    return r


def config(run: Path, *, upstream: str) -> dict[str, Any]:
    """One pipeline's configuration on ipc endpoints in ``run``; every service's upstream
    as usual except ``upstream`` (a service name) follows ``ipc://run/fake.feed``."""
    data: dict[str, Any] = {
        "pipeline": {"data_dir": str(run / "data"), "commit_interval_s": 0.05},
        "gateway": {"publish": f"ipc://{run}/gw.pub", "requests": f"ipc://{run}/gw.req"},
    }
    for name in SERVICES:
        ep: dict[str, Any] = {"feed": f"ipc://{run}/{name}.feed", "metrics_port": free_port()}
        if name == upstream:
            ep["upstream"] = f"ipc://{run}/fake.feed"
        elif name in UPSTREAM_OF:
            ep["upstream"] = f"ipc://{run}/{UPSTREAM_OF[name]}.feed"
        data.setdefault(section(name), {})["endpoints"] = ep
    data["gateway"]["features_upstream"] = f"ipc://{run}/features.feed"
    return data


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomlw.dumps(data))
    return path


def spawn(service: str, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """``python -m barstream.services.SERVICE --config CFG``, stderr to ``log``."""
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", f"barstream.services.{service}", "--config", str(cfg)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            # SIGABRT (stop() of a process that does not stop) dumps every thread's stack
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )


class FakeUpstream:
    """A ROUTER bound where a service's upstream should be: it answers nothing by itself;
    ``hello()`` waits for the follower's hello, ``batch()`` sends any batch to it."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock: zmq.Socket[bytes] = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.ident = b""
        self.conn = 0

    def hello(self, timeout_s: float) -> p.Hello:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                ident, raw = self.sock.recv_multipart()[:2]
                msg = p.decode_up(raw)
                if isinstance(msg, p.Hello):
                    self.ident, self.conn = ident, msg.conn
                    return msg
        raise AssertionError(f"no hello in {timeout_s}s")

    def batch(self, stream: str, start: int, records: np.ndarray, kind: int = KIND_BARS) -> None:
        header = p.Batch(
            conn=self.conn,
            stream=stream,
            store_id="ab" * 16,
            generation=0,
            start=start,
            count=len(records),
            end=start + len(records),
            kind=kind,
        )
        self.sock.send_multipart([self.ident, p.encode(header), records.tobytes()])

    def heartbeat(self, ends: dict[str, tuple[int, int]]) -> None:
        hb = p.Heartbeat(instance="fake", wall_ms=int(time.time() * 1000), ends=ends)
        self.sock.send_multipart([self.ident, p.encode(hb)])

    def drain(self) -> None:
        """Read what the follower sent (credits, keepalives: dropped); a new hello (it
        reconnected) becomes the connection later batches answer."""
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            try:
                msg = p.decode_up(frames[1])
            except Exception:
                continue
            if isinstance(msg, p.Hello):
                self.ident, self.conn = frames[0], msg.conn

    def close(self) -> None:
        self.sock.close(linger=0)
