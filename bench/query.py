"""HTTP API benchmarks: ``python -m bench.query`` prints a table; ``run()`` returns its rows.

Real processes and sockets all the way (bench/gateway.py's setup):

- upstream: a real ``FeedServer`` over a StoreSet of N 1m bars, in this process;
- gateway: ``python -m barstream.services.gateway`` replicating it (stores on tmpfs);
- API: ``python -m barstream serve`` over the gateway's sockets, on a free 127.0.0.1 port
  (access log off);
- client: http.client / httpx in this process.

Rows:
1. 500 k 1m bars as Arrow IPC — ``GET /v1/bars/EUR-USD/BID/1m?format=arrow``, the whole
   body read by the stdlib's http.client (median of ``repeats``; checked once: 500 k rows,
   the last bar's ts); target <= 60 ms. The same read by httpx is reported beside it:
   httpx reads a body 64 kB at a time through h11 and spends ~50 ms more on 29 MB;
2. the same as JSON (reported);
3. SSE live latency — from the upstream's ``StoreSet.commit()`` having made an appended bar
   durable (bench/gateway.py's commit stamp, before the gateway even hears of it) to the
   first SSE event carrying it in a client process (``/v1/stream``, read with httpx and
   parsed): p50 and p99 over ``samples`` bars; target p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import numpy as np

from barstream.shared.header import StoreMeta
from bench import print_table
from bench.gateway import PYTHON, REPO, Gateway, Upstream, _dirs, bars

TOPIC = "EUR-USD/BID/1m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Api:
    """``barstream serve`` over the bench gateway."""

    def __init__(self, root: Path, gw: Gateway) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = root / "api.toml"
        config.write_text(
            f'[pipeline]\ndata_dir = "{root / "unused"}"\n'
            f'[gateway]\npublish = "{gw.publish}"\nrequests = "{gw.requests}"\n'
            f'[api]\nhost = "127.0.0.1"\nport = {self.port}\n'
        )
        self.log = open(root / "api.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "barstream", "serve", "-c", str(config), "--no-access-log"],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"barstream serve did not start; see {root / 'api.log'}")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _setup(n: int) -> tuple[Path, Path, Upstream, Gateway, Api]:
    ipc, data = _dirs(tmpfs=True)
    up = Upstream(data / "up", f"ipc://{ipc}/up")

    def fill() -> None:
        up.stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).append(bars(0, n))
        up.stores.touch(TOPIC)
        up.stores.commit()

    up.call(fill)
    gw = None
    try:
        gw = Gateway(ipc, data / "gw", up.endpoint)
        gw.wait_topics(1, n)
        return ipc, data, up, gw, Api(ipc, gw)
    except BaseException:
        _teardown(ipc, data, up, gw, None)
        raise


def _teardown(ipc: Path, data: Path, up: Upstream, gw: Gateway | None, api: Api | None) -> None:
    if api is not None:
        api.close()
    if gw is not None:
        gw.close()
    up.close()
    shutil.rmtree(ipc, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)


def _get(port: int, path: str) -> bytes:
    """One request on its own connection (the timing includes the connect: ~0.1 ms)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
    finally:
        conn.close()
    assert r.status == 200, (r.status, body[:300])
    return body


def _times(get: Callable[[], bytes], reps: int) -> tuple[list[float], int]:
    """Seconds of ``reps`` calls of ``get``; and the body's size."""
    times, size = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        size = len(get())
        times.append(time.perf_counter() - t0)
    return times, size


def bench_bars(api: Api, n: int, repeats: int) -> list[tuple[str, float, str]]:
    """The whole body read by a client: the stdlib's http.client (one read of a body with
    Content-Length) for the target; httpx (64 kB reads through h11) reported beside it."""
    import pyarrow as pa
    import pyarrow.ipc

    path = "/v1/bars/EUR-USD/BID/1m?format="
    rows = []
    with httpx.Client(base_url=api.base, timeout=120) as hx:
        for fmt, reps in (("arrow", repeats), ("json", max(3, repeats // 5))):
            body = _get(api.port, path + fmt)  # warm up, and check
            if fmt == "arrow":
                table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
                got, last = table.num_rows, table["ts_ms"][-1].as_py()
            else:
                doc = msgspec.json.decode(body)
                got, last = doc["count"], doc["bars"][-1]["ts_ms"]
            assert got == n and last == int(bars(n - 1, n)["ts_ms"][0]), (fmt, got, last)
            clients = [("http.client", lambda f=fmt: _get(api.port, path + f))]
            if fmt == "arrow":
                clients.append(("httpx", lambda f=fmt: hx.get(path + f).content))
            for client, get in clients:
                times, size = _times(get, reps)
                med = statistics.median(times)
                goal = fmt == "arrow" and client == "http.client"
                rows.append(
                    (
                        f"HTTP {n // 1000}k 1m bars as {fmt}, {client} (median of {reps})",
                        med * 1e3,
                        f"ms (best {min(times) * 1e3:.1f}; {size / 1e6:.1f} MB, "
                        f"{size / med / 1e9:.2f} GB/s; {'target <= 60' if goal else 'reported'})",
                    )
                )
    return rows


def _sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each SSE event (one ``data:`` line each, as the API writes them)."""
    data = None
    for line in lines:
        if line.startswith("data: "):
            data = line[6:]
        elif line == "" and data is not None:
            yield data
            data = None


def bench_sse(
    up: Upstream, api: Api, first: int, samples: int, interval_s: float
) -> list[tuple[str, float, str]]:
    """The client is its own process (as a browser is): it prints ``ts_ms recv_ns`` for
    every bar of every event; perf_counter_ns is CLOCK_MONOTONIC, one clock for both."""
    committed = up.stamps  # ts_ms -> perf_counter_ns when its commit was durable
    last_ts = int(bars(first + samples - 1, first + samples)["ts_ms"][0])
    url = f"{api.base}/v1/stream/EUR-USD/BID/1m?history=1"
    child = subprocess.Popen(
        [PYTHON, "-m", "bench.query", "--sse-client", url, "--until", str(last_ts)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("the SSE client did not start")

        def one(i: int) -> None:
            store = up.stores.stores[TOPIC]
            rec = bars(first + i, first + i + 1)
            store.append(rec)
            up.stores.touch(TOPIC)
            up.stamp_key = int(rec["ts_ms"][0])
            up.stores.commit()

        for i in range(samples):
            up.call(one, i)
            time.sleep(interval_s)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    seen: dict[int, int] = {}
    for line in out.splitlines():
        ts, ns = (int(x) for x in line.split())
        seen.setdefault(ts, ns)  # the first event that carried the bar
    lat = [(seen[ts] - t) / 1e6 for ts, t in committed.items() if ts in seen]
    assert len(lat) == samples, f"{len(lat)} of {samples} bars reached the SSE client"
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    return [
        ("SSE live latency p50", p50, "ms (upstream commit -> SSE client process's event)"),
        ("SSE live latency p99", p99, f"ms ({len(lat)} bars; target <= 10)"),
    ]


def _sse_client(url: str, until_ts: int) -> None:
    """``--sse-client``: follow ``url``, print ``ts_ms recv_ns`` per bar until ``until_ts``."""
    timeout = httpx.Timeout(10, read=60)
    with httpx.Client(timeout=timeout) as c, c.stream("GET", url) as r:
        r.raise_for_status()
        started = False
        lines: list[str] = []
        for data in _sse_data(r.iter_lines()):
            now = time.perf_counter_ns()
            if not started:  # the history event: subscribed
                started = True
                print("ready", flush=True)
                continue
            done = False
            for b in msgspec.json.decode(data)["bars"]:
                lines.append(f"{b['ts_ms']} {now}")
                done = done or b["ts_ms"] >= until_ts
            if done:
                break
    print("\n".join(lines), flush=True)


def run(quick: bool = False) -> list[tuple[str, float, str]]:
    n = 500_000
    ipc, data, up, gw, api = _setup(n)
    try:
        rows = bench_bars(api, n, repeats=5 if quick else 21)
        rows += bench_sse(up, api, n, samples=200 if quick else 300, interval_s=0.01)
        return rows
    finally:
        _teardown(ipc, data, up, gw, api)


def main() -> None:
    ap = argparse.ArgumentParser(description="HTTP API benchmarks")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sse-client", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--until", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sse_client:
        _sse_client(args.sse_client, args.until)
        return
    print_table(run(quick=args.quick))


if __name__ == "__main__":
    main()
