"""The bad-input corpus against the running transformer service (a real process over ipc://).

A real upstream (a FeedServer over a journal StoreSet, raw bodies attached, in this test
process) serves one stream per corpus kind: a good version of a day, then the bad payload,
then a good version again — plus one stream with only good payloads. The transformer must
reject every bad payload (counted in its metrics, logged with symbol/side/day/field),
store nothing from it, hold only that stream until the good version comes, keep running,
and end with exactly the decoding of the valid records in journal order."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq

from barstream.services.transformer.transform import decode_candles
from barstream.shared.feed_server import FeedServer
from barstream.shared.header import StoreMeta
from barstream.shared.record import JOURNAL_DAY, JOURNAL_DTYPE, KIND_JOURNAL, RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet
from tests.support.ops import free_port
from tests.support.pipeline import REPO
from tests.support.wait import wait_for
from tests.unit.test_transform import BAD, DAY_MS0, GOOD

pytestmark = pytest.mark.timeout(120)


def _symbol(i: int) -> str:
    return f"BAD{i:02d}-USD"


def _journal(bodies: list[bytes]) -> np.ndarray:
    recs = np.zeros(len(bodies), JOURNAL_DTYPE)
    recs["ts_ms"] = DAY_MS0
    recs["body_len"] = [len(b) for b in bodies]
    recs["digest"] = np.arange(len(bodies))
    recs["kind"] = JOURNAL_DAY
    recs["version"] = np.arange(1, len(bodies) + 1)
    recs["src_offset"] = -1
    return recs


class Upstream:
    """A journal feed: stream → list of bodies, served from a thread's event loop."""

    def __init__(self, root: Path, endpoint: str, streams: dict[str, list[bytes]]) -> None:
        self.stores = StoreSet.open(root, "downloader")
        self.bodies = streams
        for key, bodies in streams.items():
            symbol, side, tf = key.split("/")
            self.stores.create(StoreMeta(symbol, side, tf, kind=KIND_JOURNAL)).append(
                _journal(bodies)
            )
        self.stores.commit()
        self.endpoint = endpoint
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def attachments(self, key: str, start: int, records: np.ndarray) -> list[bytes]:
        return self.bodies[key][start : start + len(records)]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.server = FeedServer(ctx, self.endpoint, self.stores, attachments=self.attachments)
        self.ready.set()
        try:
            self.loop.run_until_complete(self.server.run())
        finally:
            ctx.destroy(linger=0)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(10)
        self.stores.close()


def test_every_bad_payload_is_rejected_and_held_and_the_service_keeps_running(
    tmp_path: Path, ipc_dir: Path
) -> None:
    kinds = [name for name, *_ in BAD]
    streams = {
        f"{_symbol(i)}/BID/fetch": [GOOD, body, GOOD] for i, (_, body, _, _) in enumerate(BAD)
    }
    streams["GOOD-USD/BID/fetch"] = [GOOD, GOOD, GOOD]
    up = Upstream(tmp_path / "up", f"ipc://{ipc_dir}/dl", streams)
    port = free_port()
    config = tmp_path / "t.toml"
    config.write_text(
        "[pipeline]\n"
        f'data_dir = "{tmp_path / "data"}"\n'
        f"symbols = {[k.split('/')[0] for k in streams]!r}\n".replace("'", '"')
        + "[transformer.endpoints]\n"
        f'feed = "ipc://{ipc_dir}/tr"\n'
        f'upstream = "ipc://{ipc_dir}/dl"\n'
        f"metrics_port = {port}\n"
    )
    log = tmp_path / "transformer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "barstream.services.transformer", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    try:
        rejected, released = 0.0, 0

        def all_held_and_released() -> bool:
            nonlocal rejected, released
            assert proc.poll() is None, f"the transformer died:\n{log.read_text()[-3000:]}"
            try:
                text = (
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    .read()
                    .decode()
                )
            except OSError:
                text = ""
            m = re.search(r'^barstream_errors_total\{kind="payload_invalid"\} (\S+)$', text, re.M)
            rejected = float(m.group(1)) if m else 0.0
            released = log.read_text().count("released ")
            return rejected >= len(BAD) and released >= len(BAD)

        wait_for(
            all_held_and_released,
            60,
            what=f"{len(BAD)} payloads rejected and their streams released",
            every_s=0.1,
            on_timeout=lambda: f"{rejected} rejected, {released} released",
        )
        assert rejected == len(BAD), f"{rejected} payloads rejected, expected {len(BAD)}"
        assert proc.poll() is None, "the transformer must keep running"
        text = log.read_text()
        for i, kind in enumerate(kinds):
            assert f"holding {_symbol(i)}/BID/fetch at journal offset 1" in text, (
                f"{kind}: stream not held"
            )
            assert f"released {_symbol(i)}/BID/fetch" in text, f"{kind}: stream not released"
            assert f"{_symbol(i)}/BID/2024-01-02: " in text, f"{kind}: the error does not say where"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        up.close()

    good = decode_candles(GOOD, symbol="X", side="BID", day_ms=DAY_MS0, live=False, src_offset=0)
    for key in streams:
        symbol = key.split("/")[0]
        with Store.open(
            tmp_path / "data" / "transformer" / symbol / "BID" / "days.bars", writable=False
        ) as s:
            got = s.snapshot()
        offsets = [0, 1, 2] if symbol == "GOOD-USD" else [0, 2]  # the bad record 1 is skipped
        want = (
            np.concatenate([good.copy() for _ in offsets]) if offsets else np.zeros(0, RECORD_DTYPE)
        )
        want["src_offset"] = np.repeat(offsets, len(good))
        assert got.tobytes() == want.tobytes(), (
            f"{symbol}: store is not the valid records decoded in order"
        )
