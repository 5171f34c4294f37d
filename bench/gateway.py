"""Gateway benchmarks: ``python -m bench.gateway`` prints a table; ``run()`` returns its rows.

Every number goes through real processes and real sockets:

- upstream: a real ``shared.feed_server.FeedServer`` over a StoreSet, in this process (a thread with
  its own event loop), over ipc://;
- gateway: ``python -m barstream.services.gateway`` (a child process) replicating it, committing
  (fdatasync + checkpoint fsync) before it publishes;
- consumers: ``services.gateway.client`` in this process or in worker processes.

Rows:
1. history read — ``GatewayClient.history`` of 500 k records (32 MB) over ipc into a numpy
   array (request → gateway copies from its store → ipc → zero-copy numpy view);
2. live latency — from the upstream's ``StoreSet.commit()`` having made the bar durable
   (stamped by its first commit listener, before the FeedServer is told) to the
   consumer's ``stream()`` yielding the bar. The path: FeedServer notify → batch over ipc → gateway
   FeedClient → replica store write → gateway commit (data flush + checkpoint) → XPUB →
   SUB → client follower. Run with the gateway's stores on tmpfs and on the disk: the
   gateway's commit (fsync) is most of the disk number;
3. fan-out — C consumers (asyncio clients in W worker processes) following S symbols × T
   timeframes while the upstream appends one bar to every topic per round; reports
   updates delivered, wall time and gaps (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zmq

from barstream.services.gateway.client import AsyncGatewayClient, GatewayClient
from barstream.services.gateway.follower import BarUpdate
from barstream.shared.feed_server import FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.record import empty
from barstream.shared.storeset import StoreSet

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


class Upstream:
    """A real FeedServer over a StoreSet, served from a background thread's event loop."""

    def __init__(self, root: Path, endpoint: str) -> None:
        self.stores = StoreSet.open(root, "bench_upstream")
        # Commit stamps: this listener runs first, when the checkpoint is durable and before
        # the FeedServer is told (which may send at once, before commit() returns).
        self.stamp_key: int | None = None
        self.stamps: dict[int, int] = {}
        self.stores.on_commit(self._stamp)
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.loop = asyncio.new_event_loop()
        self.server: FeedServer | None = None
        self.endpoint = endpoint
        self.thread = threading.Thread(target=self._run, daemon=True)
        ready = threading.Event()
        self._ready = ready
        self.thread.start()
        ready.wait(10)

    def _stamp(self) -> None:
        if self.stamp_key is not None:
            self.stamps[self.stamp_key] = time.perf_counter_ns()
            self.stamp_key = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            self.server = FeedServer(self.ctx, self.endpoint, self.stores)
            self._ready.set()
            await self.server.run()

        self.loop.run_until_complete(serve())

    def call(self, fn, *args):
        """Run ``fn`` in the upstream's loop thread (the StoreSet's only writer); wait."""
        done = threading.Event()
        out: list[object] = []

        def wrapped() -> None:
            out.append(fn(*args))
            done.set()

        self.loop.call_soon_threadsafe(wrapped)
        done.wait(30)
        return out[0]

    def close(self) -> None:
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(5)
        self.stores.close()
        self.ctx.destroy(linger=0)


class Gateway:
    def __init__(self, root: Path, data: Path, upstream: str) -> None:
        self.publish = f"ipc://{root}/pub"
        self.requests = f"ipc://{root}/req"
        config = root / "gateway.toml"
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config.write_text(
            f'[pipeline]\ndata_dir = "{data}"\n[gateway]\npublish = "{self.publish}"\n'
            f'requests = "{self.requests}"\n[gateway.endpoints]\nupstream = "{upstream}"\n'
            f"metrics_port = {port}\n"
        )
        self.log = open(root / "gateway.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "barstream.services.gateway",
                "--config",
                str(config),
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_topics(self, n: int, length: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        with GatewayClient(self.publish, self.requests, timeout_s=5) as c:
            while time.monotonic() < deadline:
                try:
                    topics = c.list_topics()
                    # configured topics exist (empty) from the start: count the full ones
                    if sum(t.count == length for t in topics) >= n:
                        return
                except TimeoutError:
                    pass
                time.sleep(0.05)
        raise TimeoutError("gateway did not replicate the upstream in time")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bars(lo: int, hi: int) -> np.ndarray:
    r = empty(hi - lo)
    r["ts_ms"] = 1_700_000_000_000 + np.arange(lo, hi, dtype=np.int64) * 60_000
    r["open"] = r["high"] = r["low"] = r["close"] = 1.1
    r["src_offset"] = np.arange(lo, hi)
    r["src_count"] = 1
    return r


def _dirs(tmpfs: bool) -> tuple[Path, Path]:
    ipc = Path(tempfile.mkdtemp(prefix="bs-bench-", dir="/tmp"))
    shm = Path("/dev/shm")
    data = Path(tempfile.mkdtemp(prefix="bs-bench-", dir=shm if tmpfs and shm.is_dir() else "/tmp"))
    return ipc, data


def bench_history(n: int = 500_000, repeats: int = 15) -> list[tuple[str, float, str]]:
    ipc, data = _dirs(tmpfs=True)
    up = Upstream(data / "up", f"ipc://{ipc}/up")
    gw = None
    try:

        def fill() -> None:
            up.stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).append(bars(0, n))
            up.stores.touch("EUR-USD/BID/1m")
            up.stores.commit()

        up.call(fill)
        gw = Gateway(ipc, data / "gw", up.endpoint)
        gw.wait_topics(1, n)
        times = []
        with GatewayClient(gw.publish, gw.requests, timeout_s=10) as c:
            c.history("EUR-USD", "1m", last=10)  # connect
            for _ in range(repeats):
                t0 = time.perf_counter()
                arr = c.history("EUR-USD", "1m")
                times.append(time.perf_counter() - t0)
                assert len(arr) == n
        best, med = min(times), statistics.median(times)
        return [
            (
                f"history read {n // 1000}k records over ipc (median)",
                med * 1e3,
                f"ms (best {best * 1e3:.1f}; {n * 64 / med / 1e9:.2f} GB/s; target <= 15)",
            )
        ]
    finally:
        if gw is not None:
            gw.close()
        up.close()
        shutil.rmtree(ipc, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def stream_latencies(
    stream: Iterator[BarUpdate],
    up: Upstream,
    one: Callable[[int], None],
    committed: dict[int, int],
    samples: int,
    interval_s: float,
) -> list[float]:
    """ms from each bar's upstream commit (``committed``: ts_ms → perf_counter_ns, stamped
    by ``up``) to ``stream`` yielding it, while a thread commits ``samples`` bars
    (``one(i)`` in the upstream's loop) ``interval_s`` apart."""
    next(stream)  # the history item

    def producer() -> None:
        for i in range(samples):
            up.call(one, i)
            time.sleep(interval_s)  # not a wait: the pace of the bars

    lat: list[float] = []
    t = threading.Thread(target=producer)
    t.start()
    for item in stream:
        now = time.perf_counter_ns()
        for ts in item.records["ts_ms"]:
            if int(ts) in committed:
                lat.append((now - committed.pop(int(ts))) / 1e6)
        if len(lat) >= samples:
            break
    t.join()
    return lat


def bench_latency(
    tmpfs: bool, samples: int = 300, interval_s: float = 0.01
) -> list[tuple[str, float, str]]:
    ipc, data = _dirs(tmpfs)
    up = Upstream(data / "up", f"ipc://{ipc}/up")
    gw = None
    where = "tmpfs" if tmpfs else "disk"
    try:

        def seed() -> None:
            up.stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).append(bars(0, 10))
            up.stores.touch("EUR-USD/BID/1m")
            up.stores.commit()

        up.call(seed)
        gw = Gateway(ipc, data / "gw", up.endpoint)
        gw.wait_topics(1, 10)
        committed = up.stamps  # ts_ms -> perf_counter_ns when its commit was durable

        def one(i: int) -> None:
            store = up.stores.stores["EUR-USD/BID/1m"]
            rec = bars(10 + i, 11 + i)
            store.append(rec)
            up.stores.touch("EUR-USD/BID/1m")
            up.stamp_key = int(rec["ts_ms"][0])
            up.stores.commit()

        with GatewayClient(gw.publish, gw.requests) as c:
            stream = c.stream("EUR-USD", "1m", history=1, timeout_s=10)
            lat = stream_latencies(stream, up, one, committed, samples, interval_s)
        p50 = float(np.percentile(lat, 50))
        p99 = float(np.percentile(lat, 99))
        return [
            (
                f"live latency p50, gateway stores on {where}",
                p50,
                "ms (upstream commit -> consumer; target <= 1)",
            ),
            (
                f"live latency p99, gateway stores on {where}",
                p99,
                f"ms ({len(lat)} bars; target <= 5)",
            ),
        ]
    finally:
        if gw is not None:
            gw.close()
        up.close()
        shutil.rmtree(ipc, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def bench_fanout(
    consumers: int = 100,
    symbols: int = 42,
    timeframes: int = 10,
    rounds: int = 10,
    workers: int = 4,
) -> list[tuple[str, float, str]]:
    ipc, data = _dirs(tmpfs=True)
    up = Upstream(data / "up", f"ipc://{ipc}/up")
    gw = None
    tfs = [f"{i + 1}m" for i in range(timeframes)]
    topics = [f"S{i:02d}-USD/BID/{tf}" for i in range(symbols) for tf in tfs]
    procs: list[subprocess.Popen[bytes]] = []
    try:

        def seed() -> None:
            for t in topics:
                up.stores.ensure(StoreMeta.from_key(t)).append(bars(0, 1))
                up.stores.touch(t)
            up.stores.commit()

        up.call(seed)
        gw = Gateway(ipc, data / "gw", up.endpoint)
        gw.wait_topics(len(topics), 1)
        spec = ipc / "topics.json"
        spec.write_text(json.dumps(topics))
        per = [consumers // workers + (1 if i < consumers % workers else 0) for i in range(workers)]
        ready = [ipc / f"ready{i}" for i in range(workers)]
        outs = [ipc / f"out{i}.json" for i in range(workers)]
        for i, n in enumerate(per):
            procs.append(
                subprocess.Popen(
                    [
                        PYTHON,
                        "-m",
                        "bench.gateway",
                        "--worker",
                        str(n),
                        "--publish",
                        gw.publish,
                        "--requests",
                        gw.requests,
                        "--topics",
                        str(spec),
                        "--rounds",
                        str(rounds),
                        "--ready",
                        str(ready[i]),
                        "--out",
                        str(outs[i]),
                    ],
                    cwd=REPO,
                )
            )
        deadline = time.monotonic() + 300
        while not all(r.exists() for r in ready):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("fan-out workers did not start")
            time.sleep(0.05)

        def round_(k: int) -> None:
            for t in topics:
                up.stores.stores[t].append(bars(k, k + 1))
                up.stores.touch(t)
            up.stores.commit()

        t0 = time.perf_counter()
        for k in range(1, rounds + 1):
            up.call(round_, k)
            time.sleep(0.5)
        for p in procs:
            p.wait(600)
        wall = time.perf_counter() - t0
        results = [json.loads(o.read_text()) for o in outs]
        delivered = sum(r["updates"] for r in results)
        gaps = sum(r["gaps"] for r in results)
        complete = sum(r["complete"] for r in results)
        return [
            (
                f"fan-out {consumers} consumers x {symbols} symbols x {timeframes} TFs, {rounds} rounds",
                float(gaps),
                f"gaps ({delivered} updates delivered in {wall:.1f}s; {complete}/{consumers} consumers complete)",
            )
        ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if gw is not None:
            gw.close()
        up.close()
        shutil.rmtree(ipc, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


async def _worker(args: argparse.Namespace) -> dict[str, int]:
    topics = json.loads(Path(args.topics).read_text())
    totals = {"updates": 0, "gaps": 0, "complete": 0}
    started = asyncio.Event()
    joined = 0

    async def consumer() -> None:
        nonlocal joined
        ends = {t: 0 for t in topics}
        async with AsyncGatewayClient(args.publish, args.requests, timeout_s=60) as c:
            first = True
            async for item in c.stream_topics(topics, history=1, timeout_s=120):
                if item.kind == "history":
                    ends[item.topic] = item.end_offset
                    if first and all(ends.values()):
                        first = False
                        joined += 1
                        if joined == args.worker:
                            started.set()
                    continue
                totals["updates"] += 1
                ends[item.topic] = item.end_offset
                if all(e == args.rounds + 1 for e in ends.values()):
                    totals["complete"] += 1
                    break
            totals["gaps"] += c.gaps

    tasks = [asyncio.create_task(consumer()) for _ in range(args.worker)]
    await asyncio.wait_for(started.wait(), 300)
    Path(args.ready).touch()
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    return totals


def run(quick: bool = False) -> list[tuple[str, float, str]]:
    rows = bench_history()
    rows += bench_latency(tmpfs=True)
    rows += bench_latency(tmpfs=False, samples=100 if quick else 300)
    rows += bench_fanout(rounds=3 if quick else 10)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="gateway benchmarks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--publish", help=argparse.SUPPRESS)
    ap.add_argument("--requests", help=argparse.SUPPRESS)
    ap.add_argument("--topics", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ready", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        totals = asyncio.run(_worker(args))
        Path(args.out).write_text(json.dumps(totals))
        return
    rows = run(quick=args.quick)
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>10}  unit / notes")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.3f}  {unit}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
