"""Run a real barstream pipeline in tests: the fake Dukascopy server and the services as
child processes talking over ipc:// in a temp dir. Also the *reference* computation the
stores must equal: decode every raw-cache day (or every journal record's body) directly,
merge, resample — no sockets."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from barstream.shared.timeframe import DAY_MS
from tests.support.ops import free_port  # one allocator: ports never repeat
from tests.support.wait import wait_for

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("downloader", "transformer", "aggregator", "resampler", "gateway")
#: Every stage, the features stage included, in start order.
STAGES = ("downloader", "transformer", "aggregator", "resampler", "features", "gateway")


def core_features() -> str:
    """The demo's ``[[features]]`` tables (config/demo.toml), as TOML text."""
    text = (REPO / "config" / "demo.toml").read_text()
    return text[text.index("[[features]]") :]


@dataclass
class Pipeline:
    """Paths and endpoints of one test pipeline."""

    root: Path  # data dir
    ipc: Path  # short dir for ipc sockets
    fake_port: int
    symbols: list[str]
    sides: list[str]
    start_date: dt.date
    end_date: dt.date | None
    timeframes: list[str] = field(
        default_factory=lambda: ["5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y"]
    )
    alignment: str = "utc"
    extra: str = ""
    #: ``[[features]]`` tables (TOML): the features stage runs, the gateway follows it too.
    features: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.root / "barstream.toml"

    def write_config(self, **downloader: object) -> Path:
        dl = {
            "base_url": f'"http://127.0.0.1:{self.fake_port}"',
            "requests_per_second": 500,
            "burst": 50,
            "live_poll_interval_s": 0.5,
            "max_retries": 6,
        }
        if self.end_date is not None:
            dl["end_date"] = self.end_date.isoformat()
        for k, v in downloader.items():
            dl[k] = (
                json.dumps(v)
                if isinstance(v, str)
                else ("true" if v is True else "false" if v is False else v)
            )
        lines = [
            "[pipeline]",
            f'data_dir = "{self.root / "data"}"',
            f"symbols = {json.dumps(self.symbols)}",
            f"sides = {json.dumps(self.sides)}",
            f"start_date = {self.start_date.isoformat()}",
            "commit_interval_s = 0.02",
            "",
            "[downloader]",
            *(f"{k} = {v}" for k, v in dl.items()),
            "",
            "[resampler]",
            f'alignment = "{self.alignment}"',
            f"timeframes = {json.dumps(self.timeframes)}",
            "",
            "[gateway]",
            f'publish = "ipc://{self.ipc}/gw-pub"',
            f'requests = "ipc://{self.ipc}/gw-req"',
            f'features_upstream = "ipc://{self.ipc}/features"',
        ]
        prev = ""
        for name in SERVICES:
            lines += [
                "",
                f"[{name}.endpoints]",
                f'feed = "ipc://{self.ipc}/{name}"',
                "metrics_port = 0",
            ]
            if prev:
                lines.append(f'upstream = "ipc://{self.ipc}/{prev}"')
            prev = name
        lines += [
            "",
            "[features_stage.endpoints]",
            f'feed = "ipc://{self.ipc}/features"',
            f'upstream = "ipc://{self.ipc}/resampler"',
            "metrics_port = 0",
        ]
        text = "\n".join(lines) + "\n" + self.extra + "\n" + self.features
        self.config_path.write_text(text)
        return self.config_path

    # -- processes ------------------------------------------------------------------------

    def start_fake(self, *args: str) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "barstream.fake",
            "serve",
            "--port",
            str(self.fake_port),
            *args,
        ]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log("fake"))
        self.procs["fake"] = proc

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"fake upstream exited with {proc.returncode}; see {self.root / 'fake.log'}"
                )
            self.stats(timeout_s=1.0)
            return True

        wait_for(
            answers,
            30,
            what="the fake upstream to answer",
            ignore=(OSError,),
            on_timeout=lambda: self.log_tail("fake"),
        )
        return proc

    def stats(self, timeout_s: float = 5.0) -> dict[str, object]:
        """The fake upstream's request counters (``GET /_control/stats``)."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.fake_port}/_control/stats", timeout=timeout_s
        ) as r:
            result: dict[str, object] = json.loads(r.read())
            return result

    def control(self, path: str, payload: dict[str, object]) -> dict[str, object]:
        """POST to the fake upstream's control plane (``clock``, ``faults``, ``reset``)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.fake_port}/_control/{path}",
            data=json.dumps(payload).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            result: dict[str, object] = json.loads(r.read())
            return result

    def freeze_clock(self) -> None:
        """Stop the simulated clock: from now on the upstream's data no longer changes, so
        the pipeline can catch up and be compared with a direct computation."""
        self.control("clock", {"speed": 0})

    def start(self, service: str, *args: str) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            f"barstream.services.{service}",
            "--config",
            str(self.config_path),
            *args,
        ]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log(service))
        self.procs[service] = proc
        return proc

    def drain_all(self, names: tuple[str, ...] = STAGES, timeout_s: float = 240) -> None:
        """Run ``names`` to completion in drain mode, each told the followers it has in this
        run (``--drain-peers``, as ``barstream rebuild`` does: a slow starter such as the
        features stage must not find its upstream gone); every one must exit 0."""
        from barstream.rebuild import followers
        from barstream.shared import config

        cfg = config.load(self.config_path)
        for name in names:
            peers = [f for f in followers(name, cfg) if f.split(".")[0] in names]
            self.start(name, "--drain", "--drain-peers", ",".join(peers))
        for name in names:
            rc = self.wait(name, timeout_s)
            assert rc == 0, f"{name} exited {rc}:\n{self.log_tail(name)}"

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def wait(self, name: str, timeout_s: float) -> int:
        proc = self.procs[name]
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} did not finish within {timeout_s}s; log:\n{self.log_tail(name)}"
            ) from None

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)
        for proc in self.procs.values():
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

    def _log(self, name: str) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return os.open(self.root / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    # -- stores ---------------------------------------------------------------------------

    def store_records(self, service: str, key: str) -> np.ndarray:
        from barstream.shared.store import Store

        symbol, side, tf = key.split("/")
        path = self.root / "data" / service / symbol / side / f"{tf}.bars"
        with Store.open(path, writable=False) as store:
            return store.snapshot()


@contextlib.contextmanager
def pipeline(tmp: Path, ipc: Path, **kw: object) -> Iterator[Pipeline]:
    p = Pipeline(root=tmp, ipc=ipc, fake_port=free_port(), **kw)  # type: ignore[arg-type]
    try:
        yield p
    finally:
        p.stop_all()


def reference_days(
    data_dir: Path, symbol: str, side: str, start: dt.date, end: dt.date
) -> np.ndarray:
    """Decode every cached final day directly: what the transformer's store must read when
    every day was fetched once, in order."""
    from barstream.services.downloader.raw_cache import RawCache
    from barstream.services.transformer.transform import decode_candles
    from barstream.shared.record import RECORD_DTYPE

    cache = RawCache(data_dir / "raw", today=lambda: dt.date(9999, 1, 1))
    parts = []
    day = start
    offset = 0
    while day <= end:
        body = cache.get(symbol, side, day)
        assert body is not None, f"{symbol}/{side}/{day}: not in the raw cache"
        day_ms = (day - dt.date(1970, 1, 1)).days * DAY_MS
        parts.append(
            decode_candles(
                body, symbol=symbol, side=side, day_ms=day_ms, live=False, src_offset=offset
            )
        )
        offset += 1
        day += dt.timedelta(days=1)
    return np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)


def journal_body(data_dir: Path, symbol: str, side: str, rec: np.void) -> bytes:
    """The response body a downloader journal record stands for, found as the downloader
    finds it: a live body by digest, a final day in the raw cache or among its versions."""
    from barstream.services.downloader.raw_cache import RawCache
    from barstream.shared.record import JOURNAL_LIVE

    cache = RawCache(
        data_dir / "raw", today=lambda: dt.date(9999, 1, 1), live=data_dir / "downloader" / "live"
    )
    day = dt.date(1970, 1, 1) + dt.timedelta(days=int(rec["ts_ms"]) // DAY_MS)
    body = cache.body(symbol, side, day, int(rec["digest"]), live=int(rec["kind"]) == JOURNAL_LIVE)
    assert body is not None, f"{symbol}/{side}/{day}: the body of journal record {rec} is gone"
    return body


def decode_journal(
    data_dir: Path,
    symbol: str,
    side: str,
    journal: np.ndarray,
    *,
    rejected: list[int] | None = None,
) -> np.ndarray:
    """Decode the body of every day and live record of a downloader ``journal``, in journal
    order: what the transformer's store must read. A body the transformer rejects
    (``PayloadInvalid``) raises — unless ``rejected`` is given: then the record's journal
    offset is appended to it and the record skipped, as the transformer skips it."""
    from barstream.services.transformer.transform import decode_candles
    from barstream.shared.errors import PayloadInvalid
    from barstream.shared.record import JOURNAL_DAY, JOURNAL_LIVE, RECORD_DTYPE

    parts = []
    for i, rec in enumerate(journal):
        if int(rec["kind"]) not in (JOURNAL_DAY, JOURNAL_LIVE):
            continue
        try:
            parts.append(
                decode_candles(
                    journal_body(data_dir, symbol, side, rec),
                    symbol=symbol,
                    side=side,
                    day_ms=int(rec["ts_ms"]),
                    live=int(rec["kind"]) == JOURNAL_LIVE,
                    src_offset=i,
                )
            )
        except PayloadInvalid:
            if rejected is None:
                raise
            rejected.append(i)
    return np.concatenate(parts) if parts else np.zeros(0, RECORD_DTYPE)


def caught_up(p: Pipeline, service: str, upstream_service: str) -> bool:
    """``service``'s checkpoint has consumed exactly what ``upstream_service`` committed:
    every upstream store's length *and generation* (a live record rewritten in place keeps
    the length and bumps the generation)."""
    from barstream.shared.checkpoint import Checkpoint

    up = Checkpoint(p.root / "data" / upstream_service / "checkpoint.json").load()
    down = Checkpoint(p.root / "data" / service / "checkpoint.json").load()
    if up is None or down is None:
        return False
    for key, mark in up.stores.items():
        got = down.upstream.get(key)
        if got is None or got.offset != mark.length or got.generation != mark.generation:
            return False
    return True


def wait_caught_up(p: Pipeline, chain: list[tuple[str, str]], timeout_s: float) -> None:
    """Until every ``(service, upstream)`` of ``chain`` is ``caught_up``."""

    def late() -> list[str]:
        return [s for s, u in chain if not caught_up(p, s, u)]

    def tails() -> str:
        still = late()
        logs = "\n".join(f"--- {s}:\n{p.log_tail(s)}" for s in still)
        return f"not caught up: {still}\n{logs}"

    wait_for(lambda: not late(), timeout_s, what=f"{chain} to catch up", on_timeout=tails)
