"""HTTP API benchmarks: ``python -m bench.query`` prints a table; ``run()`` returns its rows.

Real processes and sockets throughout: an upstream FeedServer (this process) → the gateway
(``python -m barstream.services.gateway``, stores on tmpfs) → ``barstream serve`` (uvicorn)
→ httpx over 127.0.0.1 in this process.

Rows:
1. 500 k 1m bars as Arrow IPC — ``GET /v1/bars/EUR-USD/BID/1m?format=arrow``, request to
   the last byte, decoded with pyarrow (median of N);
2. the same as JSON (decoded with msgspec);
3. SSE live latency — from the upstream's commit of a bar (stamped by its first commit
   listener) through the gateway and the API to the client having parsed the event
   (p50 / p99). The gateway's own commit (fsync) and publish are on the path; compare
   ``bench.gateway``'s live latency (the same path minus the API hop).
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import threading
import time

import httpx
import msgspec
import numpy as np

from barstream.shared.header import StoreMeta
from bench.gateway import PYTHON, REPO, Gateway, Upstream, _dirs, bars

N = 500_000
TOPIC = "EUR-USD/BID/1m"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(quick: bool = False, repeats: int = 9, samples: int = 300) -> list[tuple[str, float, str]]:
    ipc, data = _dirs(tmpfs=True)
    up = Upstream(data / "up", f"ipc://{ipc}/up")
    gw = None
    api = None
    log = open(ipc / "api.log", "ab")  # noqa: SIM115
    n = 50_000 if quick else N
    try:

        def fill() -> None:
            up.stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).append(bars(0, n))
            up.stores.touch(TOPIC)
            up.stores.commit()

        up.call(fill)
        gw = Gateway(ipc, data / "gw", up.endpoint)
        gw.wait_topics(1, n)
        port = _free_port()
        cfg = ipc / "api.toml"
        cfg.write_text(
            f'[pipeline]\ndata_dir = "{data}"\nsymbols = ["EUR-USD"]\nsides = ["BID"]\n'
            f'[resampler]\ntimeframes = ["1h"]\n[api]\nport = {port}\n'
            f'gateway_publish = "{gw.publish}"\ngateway_requests = "{gw.requests}"\n'
        )
        api = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "barstream.services.api",
                "--config",
                str(cfg),
                "--no-access-log",
                "--log-level",
                "WARNING",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=30) as http:
            while True:
                try:
                    if http.get(f"{base}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "barstream serve did not come up"
                time.sleep(0.1)
            rows = []
            import pyarrow as pa

            for fmt, decode in (
                ("arrow", lambda b: pa.ipc.open_stream(b).read_all().num_rows),
                ("json", lambda b: len(msgspec.json.decode(b)["bars"])),
            ):
                url = f"{base}/v1/bars/EUR-USD/BID/1m?format={fmt}"
                http.get(url + "&limit=10")  # warm
                times = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    r = http.get(url)
                    got = decode(r.content)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200 and got == n, (fmt, r.status_code, got)
                med = statistics.median(times)
                goal = "target <= 60" if fmt == "arrow" else "report"
                rows.append(
                    (
                        f"HTTP API: {n // 1000}k 1m bars as {fmt} (median)",
                        med * 1e3,
                        f"ms (best {min(times) * 1e3:.1f}; request to decoded; {goal})",
                    )
                )
        rows += _sse_latency(up, base, n, 60 if quick else samples)
        return rows
    finally:
        if api is not None:
            api.terminate()
            api.wait(15)
        if gw is not None:
            gw.close()
        up.close()
        log.close()
        shutil.rmtree(ipc, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)


def _sse_latency(up: Upstream, base: str, n: int, samples: int) -> list[tuple[str, float, str]]:
    committed = up.stamps  # ts_ms -> perf_counter_ns of the durable commit

    def one(i: int) -> None:
        store = up.stores.stores[TOPIC]
        rec = bars(n + i, n + i + 1)
        store.append(rec)
        up.stores.touch(TOPIC)
        up.stamp_key = int(rec["ts_ms"][0])
        up.stores.commit()

    lat: list[float] = []
    with (
        httpx.Client(timeout=httpx.Timeout(10.0, read=15.0)) as client,
        client.stream("GET", f"{base}/v1/stream/EUR-USD/BID/1m?history=1") as r,
    ):
        lines = r.iter_lines()
        started = False
        producer: threading.Thread | None = None
        for line in lines:
            if not line.startswith("data: "):
                continue
            now = time.perf_counter_ns()
            ev = msgspec.json.decode(line[6:])
            if not started:  # the history event: start the producer
                started = True

                def produce() -> None:
                    for i in range(samples):
                        up.call(one, i)
                        time.sleep(0.01)

                producer = threading.Thread(target=produce)
                producer.start()
                continue
            for bar in ev["bars"]:
                if bar["ts_ms"] in committed:
                    lat.append((now - committed[bar["ts_ms"]]) / 1e6)
            if len(lat) >= samples:
                break
        if producer is not None:
            producer.join()
    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
    return [
        ("HTTP API: SSE live latency p50", p50, "ms (upstream commit -> client event)"),
        ("HTTP API: SSE live latency p99", p99, f"ms ({len(lat)} bars; target <= 10)"),
    ]


def main() -> None:
    import bench

    bench.print_table(run())


if __name__ == "__main__":
    main()
