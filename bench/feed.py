"""Feed benchmark: one hop between two processes over ipc://.

The upstream process appends ``N`` records in batches of ``BATCH`` to its store, commits
(every batch, or group commit every ``GROUP_COMMIT_S``) and serves them with a FeedServer;
the downstream process follows with a FeedClient, writes every batch into its own store
and commits on idle (at most every ``GROUP_COMMIT_S`` while data flows, always at the end).
The clock runs from the upstream's first append to the downstream's last commit, so every
record is durably committed on both sides inside the measured interval. The parent checks
afterwards that both stores hold the same bytes.

    python -m bench.feed            # table for the repo's disk and /dev/shm
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from barstream.shared.feed_client import FeedClient
from barstream.shared.feed_server import FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.record import RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet

REPO = Path(__file__).resolve().parent.parent
N = 8_000_000
BATCH = 16_384
GROUP_COMMIT_S = 0.05
META = StoreMeta("EUR-USD", "BID", "1m")


def _records(n: int) -> np.ndarray:
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ts_ms"] = np.arange(n, dtype=np.int64) * 60_000
    r["open"] = r["high"] = r["low"] = r["close"] = 1.1 + (np.arange(n) % 1000) * 1e-5
    r["volume"] = 1.0
    r["src_offset"] = np.arange(n)
    r["src_count"] = 1
    return r


async def _upstream(root: Path, endpoint: str, n: int, batch: int, per_batch: bool) -> None:
    records = _records(n)  # before the server exists: a peer must not wait for it
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stores = StoreSet.open(root, "bench-up")
    store = stores.create(META)
    stores.commit()
    server = FeedServer(ctx, endpoint, stores)
    serving = asyncio.create_task(server.run())
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0 = time.monotonic()
    last_commit = t0
    for i in range(0, n, batch):
        store.append(records[i : i + batch])
        stores.touch(META.key)
        now = time.monotonic()
        if per_batch or now - last_commit >= GROUP_COMMIT_S:
            stores.commit()
            last_commit = now
        await asyncio.sleep(0)  # let the feed server pump
    stores.commit()
    print(f"start {t0:.6f}", flush=True)
    server.done = True
    await server.wait_drained(timeout_s=120)
    server.close()
    await serving
    stores.close()
    ctx.destroy(linger=0)


async def _downstream(root: Path, endpoint: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stores = StoreSet.open(root, "bench-down")
    last = [time.monotonic()]

    async def handler(batch, records, attachments) -> None:
        store = stores.get(batch.stream) or stores.create(StoreMeta.from_key(batch.stream))
        store.write(batch.start, records)
        stores.touch(batch.stream)

    async def on_idle() -> None:
        if time.monotonic() - last[0] >= GROUP_COMMIT_S and stores.pending():
            stores.commit()
            last[0] = time.monotonic()

    client = FeedClient(ctx, endpoint, stores.upstream, handler, name="bench-down", on_idle=on_idle)
    print("ready", flush=True)
    await client.run(until_caught_up=True)
    if stores.pending():
        stores.commit()
    print(f"end {time.monotonic():.6f}", flush=True)
    stores.close()
    ctx.destroy(linger=0)


def hop(base: Path, *, n: int = N, batch: int = BATCH, per_batch: bool = False) -> float:
    """Records/s of one hop between two processes with stores under ``base``."""
    with (
        tempfile.TemporaryDirectory(dir=base, prefix="bs-bench-") as d,
        tempfile.TemporaryDirectory(dir="/tmp", prefix="bs-") as ipc,
    ):
        endpoint = f"ipc://{ipc}/feed"
        cmd = [sys.executable, "-m", "bench.feed", "--endpoint", endpoint]
        up = subprocess.Popen(
            [*cmd, "--role", "up", "--dir", f"{d}/up", "--n", str(n), "--batch", str(batch)]
            + (["--per-batch"] if per_batch else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        down = subprocess.Popen(
            [*cmd, "--role", "down", "--dir", f"{d}/down"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        try:
            assert up.stdout is not None and up.stdin is not None and down.stdout is not None
            assert up.stdout.readline().strip() == "ready"
            assert down.stdout.readline().strip() == "ready"
            up.stdin.write("go\n")
            up.stdin.flush()
            start = float(up.stdout.readline().split()[1])
            end = float(down.stdout.readline().split()[1])
            if up.wait(120) or down.wait(120):
                raise RuntimeError(f"bench processes failed: {up.returncode} {down.returncode}")
        finally:
            for proc in (up, down):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        a = Store.open(Path(d) / "up" / "EUR-USD/BID/1m.bars", writable=False)
        b = Store.open(Path(d) / "down" / "EUR-USD/BID/1m.bars", writable=False)
        try:
            if a.length != n or a.records.tobytes() != b.records.tobytes():
                raise RuntimeError("downstream copy differs from the upstream store")
        finally:
            a.close()
            b.close()
        return n / (end - start)


def places() -> list[tuple[str, Path]]:
    out = [("disk", REPO / "var")]
    if Path("/dev/shm").is_dir():
        out.append(("shm", Path("/dev/shm")))
    return out


def run() -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    for label, base in places():
        base.mkdir(parents=True, exist_ok=True)
        rows.append((f"feed hop, 2 processes, group commit ({label})", hop(base), "records/s"))
        rows.append(
            (
                f"feed hop, 2 processes, upstream commit per batch ({label})",
                hop(base, per_batch=True),
                "records/s",
            )
        )
    return rows


def _main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--role", choices=("up", "down"))
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--endpoint", default="")
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--per-batch", action="store_true")
    args = ap.parse_args()
    if args.role == "up":
        asyncio.run(_upstream(args.dir, args.endpoint, args.n, args.batch, args.per_batch))
    elif args.role == "down":
        asyncio.run(_downstream(args.dir, args.endpoint))
    else:
        from bench import print_table

        print_table(run())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    _main()
