"""A real child process that serves or follows a store over a feed (integration tests).

    python -m tests.support.feed_node up ROOT ENDPOINT SEED COMMITS [PACE_MS]
        own StoreSet "up" at ROOT; follow tests.support.plan (appends, provisional
        rewrites, deeper revisions) until the checkpoint holds COMMITS commits, serving
        the store all along; then say ``done`` (drain mode) and keep serving.
        Prints ``ready <commits>``, ``ack <c>`` per commit, ``done <length>``.

    python -m tests.support.feed_node down ROOT ENDPOINT [--drain] [--slow-ms N] [--credit N]
        own StoreSet "down" at ROOT; replicate every upstream stream with ``Store.write``;
        commit when the socket is drained. Prints ``ready``, ``commit <offset>`` per commit,
        and with --drain ``caught-up <offset>`` before exiting 0 once it holds everything.

Both stop cleanly on SIGTERM. Anything else is a bug: the traceback goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

import numpy as np
import zmq

from barstream.shared import protocol as p
from barstream.shared.feed_client import FeedClient
from barstream.shared.feed_server import FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.storeset import StoreSet
from tests.support.plan import apply, ops_for

META = StoreMeta("EUR-USD", "BID", "1m")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def upstream(root: Path, endpoint: str, seed: int, commits: int, pace_ms: float) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stores = StoreSet.open(root, "up")
    store = stores.ensure(META)
    server = FeedServer(ctx, endpoint, stores)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    serving = asyncio.create_task(server.run())
    say(f"ready {stores.commits}")
    try:
        while stores.commits < commits and not stop.is_set():
            c = stores.commits + 1
            apply(store, ops_for(seed, c, store.length, store.records, max_batch=400))
            stores.touch(META.key)
            stores.commit()
            say(f"ack {c}")
            await asyncio.sleep(pace_ms / 1000)  # not a wait: the upstream's commit pace
        if not stop.is_set():
            server.done = True
            server.notify()
            say(f"done {store.length}")
        await stop.wait()
    finally:
        server.close()
        await serving
        stores.close()
        ctx.destroy(linger=0)


async def downstream(root: Path, endpoint: str, drain: bool, slow_ms: float, credit: int) -> int:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    stores = StoreSet.open(root, "down")

    async def handler(batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> None:
        store = stores.get(batch.stream) or stores.create(StoreMeta.from_key(batch.stream))
        store.write(batch.start, records)
        stores.touch(batch.stream)
        if slow_ms:
            await asyncio.sleep(slow_ms / 1000)  # not a wait: a slow downstream's handler

    def offset() -> int:
        mark = stores.upstream.get(META.key)
        return mark.offset if mark is not None else 0

    async def on_idle() -> None:
        if stores.pending():
            stores.commit()
            say(f"commit {offset()}")

    client = FeedClient(
        ctx, endpoint, stores.upstream, handler, name="down", on_idle=on_idle, credit_window=credit
    )
    stopped = asyncio.Event()

    def on_term() -> None:
        stopped.set()
        client.close()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_term)
    say("ready")
    try:
        await client.run(until_caught_up=drain)
        if stores.pending():
            stores.commit()
        if drain and not stopped.is_set():  # run() returned by itself: caught up
            say(f"caught-up {offset()}")
    finally:
        client.close()
        stores.close()
        ctx.destroy(linger=0)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=("up", "down"))
    ap.add_argument("root", type=Path)
    ap.add_argument("endpoint")
    ap.add_argument("seed", type=int, nargs="?", default=0)
    ap.add_argument("commits", type=int, nargs="?", default=0)
    ap.add_argument("pace_ms", type=float, nargs="?", default=2.0)
    ap.add_argument("--drain", action="store_true")
    ap.add_argument("--slow-ms", type=float, default=0.0)
    ap.add_argument("--credit", type=int, default=32)
    args = ap.parse_args()
    if args.role == "up":
        asyncio.run(upstream(args.root, args.endpoint, args.seed, args.commits, args.pace_ms))
        return 0
    return asyncio.run(downstream(args.root, args.endpoint, args.drain, args.slow_ms, args.credit))


if __name__ == "__main__":
    sys.exit(main())
