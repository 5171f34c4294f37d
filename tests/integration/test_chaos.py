"""Chaos under the REAL supervisord: kill -9 every service, again and again, while history is
backfilled and live bars flow — and nothing is lost, duplicated or different.

Setup: the repository's supervisord.conf, parameterised through its environment variables
(temp config, run dir, data dir, ipc endpoints, free metrics ports); the fake Dukascopy
upstream as the ``barstream:fake_upstream`` program (demo mode) with a fast simulated clock
(10 simulated minutes per wall second, the live day rolls over mid-test); the six services;
a consumer thread streaming a few topics from the gateway with the client library.

Chaos: rounds of ``SIGKILL`` — each round kills every service once, in a seeded random order,
at seeded random moments (the pid from ``supervisorctl pid``); a quarter of the kills are
followed by a second one of the replacement while supervisord still has it STARTING (opening
its stores, catching up). Round 1 runs while history is backfilled, the others once live
minutes flow. supervisord restarts each (``autorestart``); each resumes from its checkpoint. Then the simulated clock stops (the
upstream's data is fixed), the downloader is stopped once its journal holds every final day
and the paused live day, and every service catches up (its checkpoint's upstream positions
equal its upstream's committed lengths).

Checks:

1. every store equals an uninterrupted computation over the same upstream data, byte for
   byte: the transformer store is the direct decoding of the journal's bodies in order, the
   aggregator's 1m is ``merge`` over it, the resampler's stores are ``resample_all`` over the
   1m, the features stage's stores (a small ``[[features]]`` set, ``FEATURES``) are the
   batch computation over those bars, the gateway's replicas equal the resampler's and the
   features stage's stores; and a second, clean pipeline
   (drain mode, no kills, the downloader in ``cache_only`` over a copy of the raw cache and
   the same journal) produces the same stores;
2. the consumer saw every bar once, in order: applying its items in order reproduces the
   gateway's store exactly (no item starts past the series' end, no item repeats what the
   consumer held), and its resync/reconnect counters show it survived the gateway kills.

The seed is random per run and printed in every failure message; set ``BARSTREAM_CHAOS_SEED``
to replay its schedule (the order, the delays; the machine's timing still varies).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from barstream.services.downloader.source import body_digest
from barstream.shared.checkpoint import Checkpoint, CheckpointState
from barstream.shared.config import SERVICES, UPSTREAM_OF
from barstream.shared.record import JOURNAL_DAY, JOURNAL_GAP, JOURNAL_LIVE, RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS
from barstream.supervise import Supervisor, default_conf, service_programs
from tests.support import pipeline as clean_pipeline
from tests.support.ops import free_port, pipeline_config, write_config
from tests.support.wait import wait_for

SYMBOLS = ("EUR-USD", "USD-JPY")
SIDE = "BID"
TIMEFRAMES = ["5m", "15m", "1h", "4h", "1d", "1W"]
TOPICS = ("EUR-USD/BID/1m", "EUR-USD/BID/5m", "USD-JPY/BID/1h")
#: 2026-01-14 (a Wednesday) 21:00 UTC at 600x: the live day rolls over ~18 s in.
SIM_START = "2026-01-14T21:00:00"
SPEED = 600.0
#: Upstream each service follows (the features stage and the gateway follow the resampler),
#: and the gateway's second upstream, the features stage (its feature stores).
UPSTREAM = [*UPSTREAM_OF.items(), ("gateway", "features")]
#: A small feature set (``[[features]]``) on two timeframes: a recursive indicator (its state
#: read back from the stored row after a kill), a window and a cumulative one, G = 2.
FEATURE_SET = "chaos"
FEATURE_TIMEFRAMES = ["1m", "1h"]
FEATURES = [
    {
        "name": FEATURE_SET,
        "timeframes": FEATURE_TIMEFRAMES,
        "indicators": [
            {"kind": "rsi", "params": {"period": 14}},
            {"kind": "sma", "params": {"period": 20}},
            {"kind": "macd", "params": {"fast": 12, "slow": 26, "signal": 9}},
            {"kind": "obv"},
        ],
    }
]


def feature_keys(symbol: str) -> list[tuple[str, str]]:
    """(feature store key, its bar store's key) of ``symbol``."""
    return [(f"{symbol}/{SIDE}/{tf}.{FEATURE_SET}", f"{symbol}/{SIDE}/{tf}") for tf in FEATURE_TIMEFRAMES]  # fmt: skip


def features_toml() -> str:
    """``FEATURES`` as the ``[[features]]`` tables of a configuration file."""
    from barstream import tomlw

    return tomlw.dumps({"features": FEATURES})


def _seed() -> int:
    env = os.environ.get("BARSTREAM_CHAOS_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


# ---------------------------------------------------------------------------------------
# The pipeline under supervisord
# ---------------------------------------------------------------------------------------


@dataclass
class Kill:
    service: str
    pid: int
    at_s: float  # since the chaos began
    backfilling: bool  # some stream's history was incomplete
    live: bool  # some stream's journal ended with a live day
    when: float = 0.0  # time.monotonic() of the kill
    starting: bool = False  # killed while supervisord still had it STARTING


@dataclass
class Chaos:
    seed: int
    root: Path
    sup: Supervisor
    data: dict[str, Any]
    kills: list[Kill] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return Path(self.data["pipeline"]["data_dir"])

    @property
    def fake_port(self) -> int:
        port: int = self.data["fake_upstream"]["port"]
        return port

    def why(self, message: str, *services: str, lines: int = 40) -> str:
        """A failure message: the seed, the kills so far, the log tails of ``services``."""
        parts = [
            f"[chaos seed {self.seed}; replay with BARSTREAM_CHAOS_SEED={self.seed}] {message}"
        ]
        if self.kills:
            parts.append("kills: " + ", ".join(f"{k.service}@{k.at_s:.1f}s" for k in self.kills))
        for name in services:
            path = self.sup.log_dir / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- {path} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)

    # -- supervisord ----------------------------------------------------------------------

    def ctl(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(default_conf()), *args],
            env=self.sup.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def state(self, service: str) -> tuple[str, int]:
        info = self.sup.rpc().supervisor.getProcessInfo(f"barstream:{service}")
        return str(info["statename"]), int(info["pid"])

    def wait_running(self, service: str, timeout_s: float, not_pid: int = 0) -> int:
        """Until supervisord reports ``service`` RUNNING (with a pid other than ``not_pid``)."""
        last = ("?", 0)

        def why() -> str:
            state, pid = last
            return self.why(
                f"{service} is {state} (pid {pid}), not RUNNING again within {timeout_s}s",
                service,
                "supervisord",
            )

        def running() -> int:
            nonlocal last
            last = state, pid = self.state(service)
            if state == "FATAL":
                raise AssertionError(why())
            return pid if state == "RUNNING" and pid and pid != not_pid else 0

        return wait_for(running, timeout_s, what=f"{service} RUNNING", on_timeout=why)

    def kill(self, service: str, began: float, *, starting: bool = False) -> Kill:
        """SIGKILL the service's current process (pid from ``supervisorctl pid``): once it
        is RUNNING, or (``starting``) as soon as supervisord has restarted it after the
        previous kill — while it opens its stores and catches up."""
        if starting:
            prev = next(k.pid for k in reversed(self.kills) if k.service == service)

            def restarted() -> bool:
                state, pid = self.state(service)
                return bool(pid) and pid != prev and state in ("STARTING", "RUNNING")

            wait_for(
                restarted,
                30,
                what=f"{service} restarted after a kill",
                every_s=0.02,
                on_timeout=lambda: self.why(
                    f"{service} was not restarted after a kill ({self.state(service)[0]})",
                    service,
                ),
            )
        else:
            self.wait_running(service, 30)
        out = self.ctl("pid", f"barstream:{service}")
        pid = int(out.stdout.strip() or 0)
        assert pid > 0, self.why(f"supervisorctl pid barstream:{service}: {out.stdout!r}")
        backfilling, live = self.journal_phase()
        with contextlib.suppress(ProcessLookupError):  # it may have died meanwhile
            os.kill(pid, signal.SIGKILL)
        now = time.monotonic()
        k = Kill(service, pid, now - began, backfilling, live, now, starting)
        self.kills.append(k)
        return k

    # -- upstream -------------------------------------------------------------------------

    def control(self, path: str, payload: dict[str, object] | None = None) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.fake_port}/_control/{path}",
            data=None if payload is None else json.dumps(payload).encode(),
            method="GET" if payload is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    def live_body(self, symbol: str, day: dt.date) -> bytes:
        day_ms = (day - dt.date(1970, 1, 1)).days * DAY_MS
        url = f"http://127.0.0.1:{self.fake_port}/v1/candles/minute/{symbol}/{SIDE}?from={day_ms}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body: bytes = r.read()
            return body

    # -- stores and checkpoints -----------------------------------------------------------

    def store(self, service: str, key: str) -> np.ndarray:
        symbol, side, tf = key.split("/")
        with Store.open(
            self.data_dir / service / symbol / side / f"{tf}.bars", writable=False
        ) as s:
            return s.snapshot()

    def journal(self, symbol: str) -> np.ndarray:
        return self.store("downloader", f"{symbol}/{SIDE}/fetch")

    def checkpoint(self, service: str) -> CheckpointState | None:
        return Checkpoint(self.data_dir / service / "checkpoint.json").load()

    def journal_phase(self) -> tuple[bool, bool]:
        """(some stream is still backfilling history, some stream's tail is a live day)."""
        today = dt.date.fromisoformat(SIM_START[:10])
        first = (
            dt.date.fromisoformat(str(self.data["pipeline"]["start_date"])) - dt.date(1970, 1, 1)
        ).days
        backfilling = live = False
        for symbol in SYMBOLS:
            try:
                j = self.journal(symbol)
            except Exception:  # not created yet
                return True, False
            finals = set((j["ts_ms"][j["kind"] == JOURNAL_DAY] // DAY_MS).tolist())
            if not set(range(first, (today - dt.date(1970, 1, 1)).days)) <= finals:
                backfilling = True
            if len(j) and int(j["kind"][-1]) == JOURNAL_LIVE:
                live = True
        return backfilling, live

    def lagging(self) -> list[str]:
        """Services whose checkpoint has not consumed every committed upstream record."""
        out = []
        for service, up in UPSTREAM:
            have, want = self.checkpoint(service), self.checkpoint(up)
            if have is None or want is None:
                out.append(f"{service}: no checkpoint yet")
                continue
            for key, mark in want.stores.items():
                pos = have.upstream.get(key)
                if (
                    pos is None
                    or pos.store_id != mark.store_id
                    or pos.offset != mark.length
                    or pos.generation != mark.generation
                ):
                    out.append(
                        f"{service}: {key} at {pos}, {up} committed {mark.length} (gen {mark.generation})"
                    )
        return out


# ---------------------------------------------------------------------------------------
# The consumer: the client library's stream, in a thread, recording every item
# ---------------------------------------------------------------------------------------

#: More than any topic will hold (and the gateway's max_request_records): the first item
#: is the whole series.
HISTORY = 1_000_000


class Consumer:
    """Streams ``topics`` from the gateway in a thread with the client library (its asyncio
    flavour: the same stream core as ``GatewayClient.stream``, and cancellable, so the test
    can end it without waiting for a timeout) and records every ``BarUpdate``."""

    def __init__(self, publish: str, requests: str, topics: tuple[str, ...]) -> None:
        self.publish, self.requests, self.topics = publish, requests, topics
        self.items: dict[str, list[Any]] = {t: [] for t in topics}
        self.errors: list[BaseException] = []
        self.counters = {"resyncs": 0, "reconnects": 0, "gaps": 0}
        self.arrivals: list[float] = []  # time.monotonic() of every item
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos-consumer", daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self._ready.wait(10), "consumer thread did not start"

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._task is not None and self.thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._task.cancel)
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"consumer did not stop within {timeout_s}s"

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except asyncio.CancelledError:
            pass
        except BaseException as e:  # surfaced by the test
            self.errors.append(e)
        finally:
            self._loop.close()

    async def _main(self) -> None:
        from barstream.services.gateway.client import AsyncGatewayClient

        self._task = asyncio.current_task()
        self._ready.set()
        gw = AsyncGatewayClient(self.publish, self.requests, timeout_s=10)
        try:
            async for item in gw.stream_topics(self.topics, history=HISTORY):
                self.items[item.topic].append(item)
                self.arrivals.append(time.monotonic())
                self._count(gw)
        finally:
            self._count(gw)
            gw.close()

    def _count(self, gw: Any) -> None:
        self.counters = {"resyncs": gw.resyncs, "reconnects": gw.reconnects, "gaps": gw.gaps}

    def series(self, topic: str) -> tuple[np.ndarray, list[str]]:
        """The topic's series rebuilt from the items in order, and every violation seen:
        an item starting past the end (a gap), an item re-sending a bar the consumer held
        unchanged (a duplicate), an item that changes nothing, a wrong ``replaces``."""
        items = list(self.items[topic])
        buf = np.zeros(1024, dtype=RECORD_DTYPE)
        n = 0
        problems: list[str] = []
        for i, item in enumerate(items):
            x, recs = item.start_offset, item.records
            where = f"{topic} item {i} ({item.kind}, seq {item.seq}, from {x}, {len(recs)} records)"
            if i == 0 and (item.kind != "history" or x != 0):
                problems.append(f"{where}: the first item is not the whole history")
            if item.kind not in ("history", "update", "resync"):
                problems.append(f"{where}: unexpected kind (the gateway store was never rebuilt)")
            if x > n:
                problems.append(f"{where}: gap — starts past the series end {n}")
                x = n
            if i:
                if x < n and len(recs) and recs[0].tobytes() == buf[x].tobytes():
                    problems.append(f"{where}: duplicate — re-sends bar {x} unchanged")
                if x == n and not len(recs):
                    problems.append(f"{where}: changes nothing")
                if item.replaces != n - x:
                    problems.append(f"{where}: replaces {item.replaces}, supersedes {n - x}")
            if x + len(recs) > len(buf):
                grown = np.zeros(max(2 * len(buf), x + len(recs)), dtype=RECORD_DTYPE)
                grown[:n] = buf[:n]
                buf = grown
            buf[x : x + len(recs)] = recs
            n = x + len(recs)
        return buf[:n].copy(), problems


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------


def _until_none_missing(
    chaos: Chaos, what: str, missing: Callable[[], str], timeout_s: float, *logs: str
) -> None:
    """``wait_for`` ``missing()`` (what is still missing; "" once done) to return "", then
    a failure names the seed, the kills and what was still missing, with ``logs``' tails."""
    wait_for(
        lambda: not missing(),
        timeout_s,
        what=what,
        every_s=0.1,
        on_timeout=lambda: chaos.why(f"still: {missing()}", *logs),
    )


@contextlib.contextmanager
def supervised(seed: int, *, history_days: int, rate: float) -> Iterator[Chaos]:
    """The pipeline under the repo's supervisord.conf in a temp dir; shut down on exit."""
    with tempfile.TemporaryDirectory(prefix="bs-chaos-", dir="/tmp") as d:
        root = Path(d)
        start = dt.date.fromisoformat(SIM_START[:10]) - dt.timedelta(days=history_days)
        data = pipeline_config(
            root,
            root / "data",
            fake_port=free_port(),
            start_date=start.isoformat(),
            sim_start=SIM_START,
            speed=SPEED,
            symbols=SYMBOLS,
        )
        data["resampler"]["timeframes"] = TIMEFRAMES
        data["features"] = FEATURES
        data["downloader"].update(
            requests_per_second=rate,
            burst=4,
            live_poll_interval_s=0.2,
            gap_retry_interval_s=1.0,
            max_retries=8,
        )
        config = write_config(root / "pipeline.toml", data)
        sup = Supervisor(config, root / "var", demo=True, events_port=free_port())
        proc = sup.start(foreground=True)
        chaos = Chaos(seed, root, sup, data)
        try:
            yield chaos
        finally:
            sup.shutdown(proc)


def run_chaos(seed: int, *, kills_per_service: int, history_days: int, rate: float) -> None:
    rng = random.Random(seed)
    t0 = time.monotonic()
    with supervised(seed, history_days=history_days, rate=rate) as chaos:
        states = chaos.sup.wait_running(service_programs(demo=True), 30)
        assert all(s == "RUNNING" for s in states.values()), chaos.why(
            f"not every program started: {states}", *SERVICES, "fake_upstream"
        )
        gw = chaos.data["gateway"]
        consumer = Consumer(gw["publish"], gw["requests"], TOPICS)
        consumer.start()
        try:
            _chaos_and_settle(chaos, consumer, rng, kills_per_service)
        finally:
            consumer.stop()
        # every service saw its upstream's final committed data: freeze the stores
        final = {name: chaos.ctl("stop", f"barstream:{name}").stdout for name in reversed(SERVICES)}
        for name, out in final.items():
            if name != "downloader":
                assert "stopped" in out, chaos.why(f"supervisorctl stop {name}: {out}", name)
        _check_logs(chaos)
        _check_consumer(chaos, consumer)
        _check_reference(chaos)
        _check_clean_run(chaos)
        took = time.monotonic() - t0
        by_service = {s: sum(1 for k in chaos.kills if k.service == s) for s in SERVICES}
        print(
            f"\nchaos seed {seed}: {len(chaos.kills)} kills {by_service} "
            f"({sum(k.starting for k in chaos.kills)} while starting, "
            f"{sum(k.backfilling for k in chaos.kills)} while backfilling, "
            f"{sum(k.live for k in chaos.kills)} while live); consumer {consumer.counters}, "
            f"items { ({t: len(v) for t, v in consumer.items.items()}) }; {took:.1f}s"
        )


def _chaos_and_settle(chaos: Chaos, consumer: Consumer, rng: random.Random, rounds: int) -> None:
    """Round 1 of kills while history is backfilled; the other rounds once live minutes
    flow (the journal's tail is a live day); then freeze the upstream and let all settle."""
    began = time.monotonic()
    time.sleep(rng.uniform(0.2, 0.6))  # not a wait: the seeded moment of the first kill
    for r in range(rounds):
        if r == 1:
            wait_for(
                lambda: chaos.journal_phase()[1],
                90,
                what="the live day to be polled",
                every_s=0.1,
                on_timeout=lambda: chaos.why("no live day in the journal yet", "downloader"),
            )
        order = list(SERVICES)
        rng.shuffle(order)
        for service in order:
            chaos.kill(service, began)
            if rng.random() < 0.25:  # and its replacement, before it is RUNNING
                time.sleep(rng.uniform(0.0, 0.8))  # not a wait: a seeded moment of its start
                chaos.kill(service, began, starting=True)
            assert not consumer.errors, chaos.why(
                f"consumer failed: {consumer.errors!r}", "gateway"
            )
            time.sleep(rng.uniform(0.1, 1.0))  # not a wait: the seeded pause between kills
    for k in chaos.kills[-len(SERVICES) :]:
        chaos.wait_running(k.service, 30, not_pid=k.pid)
    backfilling = [k for k in chaos.kills if k.backfilling]
    live = [k for k in chaos.kills if k.live]
    assert backfilling and live, chaos.why(
        f"the kills did not hit both phases (backfilling: {len(backfilling)}, live: {len(live)})",
        "downloader",
    )

    # Freeze the upstream: no more simulated time, so the live day's data is final.
    clock = chaos.control("clock", {"speed": 0})
    today = dt.date(1970, 1, 1) + dt.timedelta(days=int(clock["sim_now_ms"]) // DAY_MS)
    first = (
        dt.date.fromisoformat(str(chaos.data["pipeline"]["start_date"])) - dt.date(1970, 1, 1)
    ).days
    last = (today - dt.date(1970, 1, 1)).days
    want_live = {s: body_digest(chaos.live_body(s, today)) for s in SYMBOLS}

    def journal_final() -> str:
        for symbol in SYMBOLS:
            j = chaos.journal(symbol)
            if (j["kind"] == JOURNAL_GAP).any():
                return f"{symbol}: a gap in the journal"
            finals = set((j["ts_ms"][j["kind"] == JOURNAL_DAY] // DAY_MS).tolist())
            missing = sorted(set(range(first, last)) - finals)
            if missing:
                return f"{symbol}: {len(missing)} final days missing (first {missing[0]})"
            tail = j[-1]
            if int(tail["kind"]) != JOURNAL_LIVE or int(tail["ts_ms"]) // DAY_MS != last:
                return f"{symbol}: the journal's tail is not the live {today}"
            if int(tail["digest"]) != want_live[symbol]:
                return f"{symbol}: the live {today} is not the final (paused) version yet"
        return ""

    _until_none_missing(
        chaos,
        "the downloader's journal to hold the frozen upstream",
        journal_final,
        60,
        "downloader",
    )
    out = chaos.ctl("stop", "barstream:downloader")
    assert "stopped" in out.stdout, chaos.why(
        f"supervisorctl stop: {out.stdout}{out.stderr}", "downloader"
    )
    _until_none_missing(
        chaos,
        "every service to catch up with its upstream",
        lambda: "; ".join(chaos.lagging()),
        60,
        *SERVICES,
    )

    def consumer_done() -> str:
        if consumer.errors:
            raise AssertionError(chaos.why(f"consumer failed: {consumer.errors!r}", "gateway"))
        behind = []
        for topic in TOPICS:
            got, _ = consumer.series(topic)
            want = chaos.store("gateway", topic)
            if got.tobytes() != want.tobytes():
                behind.append(f"{topic}: {len(got)} of {len(want)}")
        return ", ".join(behind)

    _until_none_missing(
        chaos, "the consumer to hold the gateway's series", consumer_done, 30, "gateway"
    )


def _check_logs(chaos: Chaos) -> None:
    """No service died on its own (an exception) — only our SIGKILLs stopped them."""
    for name in SERVICES:
        text = (chaos.sup.log_dir / f"{name}.log").read_text(errors="replace")
        bad = [ln for ln in text.splitlines() if "Traceback" in ln or "stopped on" in ln]
        assert not bad, chaos.why(f"{name} failed on its own: {bad[:3]}", name, lines=80)


def _check_consumer(chaos: Chaos, consumer: Consumer) -> None:
    assert not consumer.errors, chaos.why(f"consumer failed: {consumer.errors!r}", "gateway")
    for topic in TOPICS:
        got, problems = consumer.series(topic)
        assert not problems, chaos.why(f"{topic}: " + "; ".join(problems[:5]), "gateway")
        want = chaos.store("gateway", topic)
        assert len(want) > 10, chaos.why(f"{topic}: the gateway holds only {len(want)} bars")
        assert got.tobytes() == want.tobytes(), chaos.why(
            f"{topic}: the consumer's series ({len(got)}) differs from the gateway's ({len(want)})",
            "gateway",
        )
    # It survived every gateway kill: items kept coming from each restarted gateway (the
    # old process is dead a second after the kill; the new one not even started). The
    # counters show how: a restart within HEARTBEAT_TIMEOUT_S whose seqs continue (they are
    # checkpointed) needs no resync at all; a lost publication is a gap, then a resync.
    for k in chaos.kills:
        if k.service == "gateway":
            assert any(a > k.when + 1.0 for a in consumer.arrivals), chaos.why(
                f"no item reached the consumer after the gateway kill at {k.at_s:.1f}s "
                f"(counters {consumer.counters})",
                "gateway",
            )


def _check_reference(chaos: Chaos) -> None:
    """Every store equals the uninterrupted computation over the final journal."""
    from barstream.services.aggregator.aggregate import merge
    from barstream.services.resampler.resample import resample_all
    from barstream.shared.alignment import PRESETS
    from barstream.shared.timeframe import Timeframe

    tfs = [Timeframe.parse(t) for t in TIMEFRAMES]
    for symbol in SYMBOLS:
        where = f"{symbol}/{SIDE}"
        days = clean_pipeline.decode_journal(chaos.data_dir, symbol, SIDE, chaos.journal(symbol))
        got = chaos.store("transformer", f"{where}/days")
        assert got.tobytes() == days.tobytes(), chaos.why(
            f"{where}: transformer store ({len(got)}) differs from decoding the journal "
            f"({len(days)}) at offset {_first_diff(got, days)}",
            "transformer",
        )
        _, m1 = merge(np.zeros(0, RECORD_DTYPE), days, 0)
        assert len(m1) > 1000, chaos.why(f"{where}: only {len(m1)} minutes")
        for service in ("aggregator", "resampler", "gateway"):
            got = chaos.store(service, f"{where}/1m")
            assert got.tobytes() == m1.tobytes(), chaos.why(
                f"{where}/1m: {service} store ({len(got)}) differs from merge over the "
                f"transformer store ({len(m1)}) at offset {_first_diff(got, m1)}",
                service,
            )
        expected = resample_all(m1, tfs, PRESETS["utc"])
        for key, bar_key in feature_keys(symbol):
            name = bar_key.rsplit("/", 1)[1]
            bars = m1 if name == "1m" else expected[Timeframe.parse(name)]
            want = _feature_store(chaos, key, bars)
            for service in ("features", "gateway"):
                got = chaos.store(service, key)
                assert got.tobytes() == want.tobytes(), chaos.why(
                    f"{key}: {service} store ({len(got)}) differs from the batch computation "
                    f"over resample_all's bars ({len(want)}) at offset {_first_diff(got, want)}",
                    service,
                )
        for tf, bars in expected.items():
            for service in ("resampler", "gateway"):
                got = chaos.store(service, f"{where}/{tf}")
                assert got.tobytes() == bars.tobytes(), chaos.why(
                    f"{where}/{tf}: {service} store ({len(got)}) differs from resample_all "
                    f"({len(bars)}) at offset {_first_diff(got, bars)}",
                    service,
                )


def _feature_store(chaos: Chaos, key: str, bars: np.ndarray) -> np.ndarray:
    """What the feature store ``key`` holds over ``bars``: its set's batch computation."""
    from barstream.services.features import layout
    from barstream.services.features.engine import compute
    from barstream.services.features.service import feature_keys as configured
    from barstream.shared import config as config_mod

    fs = configured(config_mod.load(chaos.root / "pipeline.toml"))[key]
    return layout.store_records(fs, bars, compute(fs, bars))


def _first_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The first offset where two record arrays differ (the shorter length if a prefix)."""
    n = min(len(a), len(b))
    ra = np.frombuffer(a[:n].tobytes(), np.uint8).reshape(n, -1)
    rb = np.frombuffer(b[:n].tobytes(), np.uint8).reshape(n, -1)
    diff = np.flatnonzero((ra != rb).any(axis=1))
    return int(diff[0]) if len(diff) else n


def _started(p: clean_pipeline.Pipeline, name: str) -> Callable[[], str]:
    """What is still missing (nothing once ``name``'s log says it started)."""
    return lambda: "" if "starting:" in p.log_tail(name, 200) else f"{name} not started"


def _check_clean_run(chaos: Chaos) -> None:
    """A clean pipeline (no kills, drain mode, the downloader cache-only over a copy of the
    raw cache and the same journal) produces the same stores, byte for byte."""
    with tempfile.TemporaryDirectory(prefix="bs-clean-", dir="/tmp") as d:
        root = Path(d)
        (root / "data").mkdir()
        for part in ("raw", "downloader"):
            shutil.copytree(chaos.data_dir / part, root / "data" / part)
        start = dt.date.fromisoformat(str(chaos.data["pipeline"]["start_date"]))
        with clean_pipeline.pipeline(
            root,
            root,
            symbols=list(SYMBOLS),
            sides=[SIDE],
            start_date=start,
            end_date=None,
            timeframes=TIMEFRAMES,
            features=features_toml(),
        ) as p:
            p.write_config(cache_only=True)
            # Downstream first, each up before its upstream starts: a drain-mode service
            # returns once the peers connected to it have everything, so a follower that
            # connects late (the features stage imports numba) would find it gone.
            for name in reversed(SERVICES):
                p.start(name, "--drain")
                _until_none_missing(chaos, f"clean run: {name} started", _started(p, name), 60)
            for name in SERVICES:
                rc = p.wait(name, 120)
                assert rc == 0, chaos.why(f"clean run: {name} exited {rc}:\n{p.log_tail(name)}")
            for symbol in SYMBOLS:
                where = f"{symbol}/{SIDE}"
                keys = [("downloader", f"{where}/fetch"), ("transformer", f"{where}/days")]
                keys += [(s, f"{where}/1m") for s in ("aggregator", "resampler", "gateway")]
                keys += [
                    (s, f"{where}/{tf}") for tf in TIMEFRAMES for s in ("resampler", "gateway")
                ]
                keys += [(s, k) for k, _ in feature_keys(symbol) for s in ("features", "gateway")]
                for service, key in keys:
                    clean, chaotic = p.store_records(service, key), chaos.store(service, key)
                    assert clean.tobytes() == chaotic.tobytes(), chaos.why(
                        f"{service} {key}: the chaos run ({len(chaotic)}) differs from a clean "
                        f"run ({len(clean)}) at offset {_first_diff(chaotic, clean)}",
                        service,
                    )


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_kill_every_service_under_supervisord() -> None:
    """3 SIGKILLs per service during backfill and live flow; stores and consumer exact."""
    run_chaos(_seed(), kills_per_service=3, history_days=28, rate=8.0)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_every_service_under_supervisord_long() -> None:
    """The same with 10 SIGKILLs per service and a longer history."""
    run_chaos(_seed(), kills_per_service=10, history_days=100, rate=6.0)
