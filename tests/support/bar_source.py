"""A small real upstream for gateway tests: a process that owns a StoreSet of bar stores and
serves it with ``shared.feed_server.FeedServer`` while it appends bars, updates the provisional
open bar and (optionally) revises history — the same feed the resampler serves.

    python -m tests.support.bar_source --dir D --endpoint ipc:///tmp/x/up \
        --topics EUR-USD/BID/1m,EUR-USD/BID/5m --bars 500 --ticks 3 \
        [--pace-s 0] [--revise-at-bar 300 --revise-depth 20] [--done-file F]

Each topic's series is deterministic (``bar()``): bar ``k`` opens at ``T0 + k·interval``;
the last bar is provisional (FLAG_PROVISIONAL) and is rewritten ``--ticks`` times before it
closes; when bar ``k+1`` opens, bar ``k`` is rewritten closed ("from offset k the store now
reads [closed k, provisional k+1]" — a one-record rewind, as the resampler does). Every step
is committed. With ``--revise-at-bar R``, once R bars exist the last ``--revise-depth`` closed
bars are rewritten with FLAG_REVISED and another close (a revision of history). At the end
the last bar is closed, the final lengths go to ``--done-file`` (JSON) and the process keeps
serving (heartbeats say ``done``) until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zmq

from barstream.shared.feed_server import FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED, RECORD_DTYPE
from barstream.shared.storeset import StoreSet
from barstream.shared.timeframe import DAY_MS, HOUR_MS, MINUTE_MS, WEEK_MS
from tests.support.ops import free_port  # one allocator: ports never repeat
from tests.support.wait import wait_for

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_UNIT_MS = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "W": WEEK_MS}


def interval_ms(timeframe: str) -> int:
    return int(timeframe[:-1]) * _UNIT_MS[timeframe[-1]]


def bar(
    topic_index: int, timeframe: str, k: int, tick: int, *, closed: bool, revised: bool = False
) -> np.ndarray:
    """Bar ``k`` of topic ``topic_index`` after ``tick`` updates (one record)."""
    r = np.zeros(1, dtype=RECORD_DTYPE)
    base = 1.0 + topic_index + k * 1e-4
    close = base + tick * 1e-5 + (0.5 if revised else 0.0)
    r["ts_ms"] = T0_MS + k * interval_ms(timeframe)
    r["open"] = base
    r["high"] = max(base, close) + 1e-5
    r["low"] = min(base, close) - 1e-5
    r["close"] = close
    r["volume"] = 1.0 + tick
    r["src_offset"] = k
    r["src_count"] = 1
    r["flags"] = (0 if closed else FLAG_PROVISIONAL) | (FLAG_REVISED if revised else 0)
    return r


async def produce(args: argparse.Namespace) -> None:
    stores = StoreSet.open(args.dir, "bar_source")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    server = FeedServer(ctx, args.endpoint, stores)
    serving = asyncio.create_task(server.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    topics = args.topics.split(",")
    series = [stores.ensure(StoreMeta.from_key(t)) for t in topics]
    stores.commit()
    revised = False
    try:
        for k in range(args.bars):
            for tick in range(args.ticks):
                for i, (topic, store) in enumerate(zip(topics, series, strict=True)):
                    tf = topic.split("/")[2]
                    if tick == 0 and k > 0:
                        # The previous bar closes as this one opens.
                        rows = np.concatenate(
                            [
                                bar(i, tf, k - 1, args.ticks - 1, closed=True),
                                bar(i, tf, k, 0, closed=False),
                            ]
                        )
                        store.write(k - 1, rows)
                    else:
                        store.write(k, bar(i, tf, k, tick, closed=False))
                    stores.touch(topic)
                if (
                    args.revise_at_bar
                    and not revised
                    and k == args.revise_at_bar
                    and tick == args.ticks - 1
                ):
                    revised = True
                    for i, (topic, store) in enumerate(zip(topics, series, strict=True)):
                        tf = topic.split("/")[2]
                        lo = max(0, k - args.revise_depth)
                        revised_rows = [
                            bar(i, tf, j, args.ticks - 1, closed=True, revised=True)
                            for j in range(lo, k)
                        ]
                        revised_rows.append(bar(i, tf, k, tick, closed=False))
                        store.write(lo, np.concatenate(revised_rows))
                        stores.touch(topic)
                stores.commit()
                if args.pace_s:
                    await asyncio.sleep(args.pace_s)  # not a wait: the pace of the source
                else:
                    await asyncio.sleep(0)  # not a wait: let the feed server send
                if stop.is_set():
                    return
        for i, (topic, store) in enumerate(zip(topics, series, strict=True)):
            tf = topic.split("/")[2]
            k = args.bars - 1
            store.write(k, bar(i, tf, k, args.ticks - 1, closed=True))
            stores.touch(topic)
        stores.commit()
        server.done = True
        if args.done_file:
            tmp = Path(args.done_file + ".tmp")
            tmp.write_text(
                json.dumps({t: s.committed_length for t, s in zip(topics, series, strict=True)})
            )
            os.replace(tmp, args.done_file)
        await stop.wait()
    finally:
        server.close()
        serving.cancel()
        stores.close()
        ctx.destroy(linger=0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--topics", required=True, help="comma-separated SYMBOL/SIDE/TF")
    ap.add_argument("--bars", type=int, default=100)
    ap.add_argument("--ticks", type=int, default=3, help="updates of each provisional bar")
    ap.add_argument("--pace-s", type=float, default=0.0, help="pause after each commit")
    ap.add_argument("--revise-at-bar", type=int, default=0)
    ap.add_argument("--revise-depth", type=int, default=10)
    ap.add_argument("--done-file", default="")
    asyncio.run(produce(ap.parse_args()))


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------------------------------
# Test helpers: run the bar source and a gateway as real processes
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")


class Procs:
    """The processes of one test (bar source + gateway), their endpoints and files."""

    def __init__(
        self,
        root: Path,
        data_root: Path | None = None,
        *,
        symbols: tuple[str, ...] = ("EUR-USD",),
        timeframes: tuple[str, ...] = ("5m",),
    ) -> None:
        """``symbols``/``timeframes``: what the gateway is configured for (it takes no
        other upstream stream: shared/names.py)."""
        self.root = root
        self.data_root = data_root or root
        self.upstream = f"ipc://{root}/up"
        self.publish = f"ipc://{root}/pub"
        self.requests = f"ipc://{root}/req"
        self.source_dir = self.data_root / "source"
        self.done_file = root / "done.json"
        self.config = root / "gateway.toml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_port = free_port()
        self.config.write_text(
            "[pipeline]\n"
            f'data_dir = "{self.data_root}/data"\n'
            f"symbols = {list(symbols)!r}\n"
            # The gateway serves every configured topic from the start (empty until bars
            # come): configure just EUR-USD/BID 1m + 5m, what most tests publish.
            "[resampler]\n"
            f"timeframes = {list(timeframes)!r}\n"
            "[gateway]\n"
            f'publish = "{self.publish}"\n'
            f'requests = "{self.requests}"\n'
            "[gateway.endpoints]\n"
            f'upstream = "{self.upstream}"\n'
            f"metrics_port = {self.metrics_port}\n"
        )

    def start_source(self, topics: list[str], **options: object) -> subprocess.Popen[bytes]:
        args = [
            PYTHON,
            "-m",
            "tests.support.bar_source",
            "--dir",
            str(self.source_dir),
            "--endpoint",
            self.upstream,
            "--topics",
            ",".join(topics),
            "--done-file",
            str(self.done_file),
        ]
        for name, value in options.items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return self._start("source", args)

    def start_gateway(self, *extra: str) -> subprocess.Popen[bytes]:
        args = [PYTHON, "-m", "barstream.services.gateway", "--config", str(self.config), *extra]
        return self._start("gateway", args)

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=10)

    def wait_done(self, timeout_s: float = 60.0) -> dict[str, int]:
        """The source's final lengths, once it has written them."""

        def done() -> bool:
            if self.done_file.exists():
                return True
            proc = self.procs.get("source")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(
                    f"bar source exited {proc.returncode}; see {self.root}/source.log"
                )
            return False

        wait_for(
            done,
            timeout_s,
            what="the bar source to finish",
            every_s=0.02,
            on_timeout=lambda: f"see {self.root}/source.log",
        )
        lengths: dict[str, int] = json.loads(self.done_file.read_text())
        return lengths

    def source_records(self, topic: str) -> np.ndarray:
        """The source's committed series of ``topic`` (read-only open, copied)."""
        from barstream.shared.store import Store

        path = StoreSet(root=self.source_dir, service="bar_source").path_for(topic)
        with Store.open(path, writable=False) as store:
            return store.snapshot()

    def gateway_records(self, topic: str) -> np.ndarray:
        from barstream.shared.store import Store

        path = StoreSet(root=self.data_root / "data" / "gateway", service="gateway").path_for(topic)
        with Store.open(path, writable=False) as store:
            return store.snapshot()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


@contextlib.contextmanager
def tmpfs_procs(ipc_dir: Path, **config: tuple[str, ...]) -> Iterator[Procs]:
    """``Procs`` with endpoints in ``ipc_dir`` and stores on tmpfs when the machine has one
    (the gateway commits, and so publishes, at fsync speed otherwise; nothing else
    changes); every process stopped and the stores removed at the end."""
    shm = Path("/dev/shm")
    data = Path(tempfile.mkdtemp(prefix="bs-gw-", dir=shm if shm.is_dir() else ipc_dir))
    p = Procs(ipc_dir, data, **config)
    try:
        yield p
    finally:
        p.stop_all()
        shutil.rmtree(data, ignore_errors=True)
