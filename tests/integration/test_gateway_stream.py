"""Gateway end to end: a real bar source (FeedServer over a StoreSet), a real gateway
process, real consumers over ipc://. Stores live on tmpfs when the machine has one (the
gateway commits — and so publishes — at fsync speed otherwise; nothing else changes)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream.services.gateway.client import AsyncGatewayClient, GatewayClient
from barstream.services.gateway.follower import BarUpdate
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED
from tests.support.bar_source import Procs, tmpfs_procs
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)

TOPICS = ["EUR-USD/BID/1m", "EUR-USD/BID/5m", "GBP-USD/BID/1m", "GBP-USD/BID/1h"]


@pytest.fixture
def procs(ipc_dir: Path) -> Iterator[Procs]:
    with tmpfs_procs(ipc_dir, symbols=("EUR-USD", "GBP-USD"), timeframes=("5m", "1h")) as p:
        yield p


def gateway_log(procs: Procs) -> Callable[[], str]:
    return lambda: f"gateway log:\n{procs.log_tail('gateway')}"


def published(client: GatewayClient) -> int:
    try:
        return client.status().published
    except TimeoutError:
        return 0


class Replica:
    """Applies stream items the way a consumer would, and checks the contract on the way:
    no gap (an item never starts past the end), no duplicate (an item always changes
    something), provisional flags consistent with the mask."""

    def __init__(self) -> None:
        self.base = -1
        self.series = np.zeros(0, dtype=np.dtype([("b", "V64")]))
        self.records: np.ndarray | None = None
        self.items = 0

    @property
    def end(self) -> int:
        return self.base + (0 if self.records is None else len(self.records))

    def apply(self, item: BarUpdate) -> None:
        self.items += 1
        assert (item.provisional == ((item.records["flags"] & FLAG_PROVISIONAL) != 0)).all()
        if self.records is None:
            assert item.kind == "history"
            self.base, self.records = item.start_offset, item.records.copy()
            return
        assert item.start_offset <= self.end, f"gap: item at {item.start_offset}, end {self.end}"
        assert item.start_offset >= self.base, "item below the history window"
        old = self.records
        new = np.concatenate([old[: item.start_offset - self.base], item.records])
        same_len = len(new) == len(old)
        assert not (same_len and new.tobytes() == old.tobytes()), (
            f"duplicate: item {item} changes nothing"
        )
        assert item.replaces == max(0, self.end - item.start_offset)
        self.records = new

    def equals_tail_of(self, full: np.ndarray) -> bool:
        return (
            self.records is not None
            and self.end == len(full)
            and self.records.tobytes() == full[self.base :].tobytes()
        )


def consume_until_final(
    client: GatewayClient,
    procs: Procs,
    topic: str,
    replica: Replica,
    *,
    history: int = 100,
    pause_after_first: float = 0.0,
    on_item=None,
    timeout_s: float = 60.0,
) -> None:
    symbol, side, tf = topic.split("/")
    deadline = time.monotonic() + timeout_s
    final: np.ndarray | None = None
    for item in client.stream(symbol, tf, side=side, history=history, timeout_s=15):
        replica.apply(item)
        if on_item is not None:
            on_item(replica)
        if pause_after_first and replica.items == 1:
            procs.wait_done(timeout_s=60)  # a deliberately stalled consumer
        if final is None and procs.done_file.exists():
            final = procs.source_records(topic)
        if final is not None and replica.equals_tail_of(final):
            return
        assert time.monotonic() < deadline, (
            f"{topic}: not caught up in {timeout_s}s: end {replica.end}\n{procs.log_tail('gateway')}"
        )


def test_late_join_full_speed_history_plus_live_exactly_once(procs: Procs) -> None:
    procs.start_source(TOPICS, bars=1500, ticks=2)
    procs.start_gateway()
    with GatewayClient(procs.publish, procs.requests, timeout_s=2) as probe:
        wait_for(
            lambda: published(probe) > 2000,
            30,
            what="the gateway to publish 2000 updates",
            on_timeout=gateway_log(procs),
        )
    assert not procs.done_file.exists(), "the source finished before the consumer joined"
    full, closed = Replica(), Replica()
    closed_bars: list[np.ndarray] = []
    errors: list[BaseException] = []

    def closed_consumer() -> None:
        try:
            with GatewayClient(procs.publish, procs.requests) as c:
                for item in c.stream("EUR-USD", "5m", history=50, closed_only=True, timeout_s=15):
                    assert not (item.records["flags"] & FLAG_PROVISIONAL).any()
                    if item.kind != "history":
                        assert item.replaces == 0, "no revision in this run"
                        assert item.start_offset == closed.end, "closed bars are yielded in order"
                    closed.apply(item)
                    closed_bars.append(item.records)
                    if procs.done_file.exists():
                        final = procs.source_records("EUR-USD/BID/5m")
                        if closed.equals_tail_of(final):
                            return
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    t = threading.Thread(target=closed_consumer)
    t.start()
    with GatewayClient(procs.publish, procs.requests) as client:
        consume_until_final(client, procs, "EUR-USD/BID/1m", full, history=100)
        assert client.resyncs == 0 and client.gaps == 0
    t.join(timeout=60)
    assert not errors, errors
    assert not t.is_alive()
    assert full.items > 100  # history + live updates, not one late snapshot
    assert full.equals_tail_of(procs.gateway_records("EUR-USD/BID/1m"))
    times = np.concatenate(closed_bars)["ts_ms"]
    assert (np.diff(times) > 0).all(), "each closed bar exactly once, in order"
    assert closed.equals_tail_of(procs.gateway_records("EUR-USD/BID/5m"))


def test_async_client_late_join(procs: Procs) -> None:
    # Paced (>= 6 s of commits) so the late joiner sees live updates after its history
    # however slowly it starts on a loaded machine; unpaced, the source could finish first.
    procs.start_source(TOPICS[:2], bars=600, ticks=2, pace_s=0.005)
    procs.start_gateway()
    with GatewayClient(procs.publish, procs.requests, timeout_s=2) as probe:
        wait_for(
            lambda: published(probe) > 200, 30, what="first updates", on_timeout=gateway_log(procs)
        )

    async def run() -> Replica:
        replica = Replica()
        async with AsyncGatewayClient(procs.publish, procs.requests) as c:
            topics = await c.list_topics("EUR-USD/")
            # the configured EUR-USD topics (1h too: configured for GBP-USD's 1h, empty)
            assert {t.topic for t in topics} == {*TOPICS[:2], "EUR-USD/BID/1h"}
            async for item in c.stream("EUR-USD", "5m", history=20, timeout_s=15):
                replica.apply(item)
                if procs.done_file.exists() and replica.equals_tail_of(
                    procs.source_records("EUR-USD/BID/5m")
                ):
                    hist = await c.history("EUR-USD", "5m", last=10)
                    assert replica.records is not None
                    assert hist.tobytes() == replica.records[-10:].tobytes()
                    return replica
        raise AssertionError("stream ended")

    replica = asyncio.run(asyncio.wait_for(run(), 90))
    assert replica.items > 20


def test_slow_consumer_overflows_detects_gap_and_resyncs(procs: Procs) -> None:
    procs.start_source(TOPICS, bars=1500, ticks=2)
    procs.start_gateway("--publish-hwm", "500")
    replicas = {t: Replica() for t in TOPICS}
    with GatewayClient(procs.publish, procs.requests, rcvhwm=100) as client:
        wait_for(
            lambda: published(client) > 100, 30, what="first updates", on_timeout=gateway_log(procs)
        )
        final: dict[str, np.ndarray] = {}
        paused = False
        for item in client.stream_topics(TOPICS, history=10, timeout_s=15):
            replicas[item.topic].apply(item)
            if not paused:
                paused = True
                procs.wait_done(timeout_s=60)  # stall while thousands of updates are published
            if not final and procs.done_file.exists():
                final = {t: procs.source_records(t) for t in TOPICS}
            if final and all(replicas[t].equals_tail_of(final[t]) for t in TOPICS):
                break
        assert client.gaps >= 1, "the stalled consumer must have seen a sequence gap"
        assert client.resyncs >= 1
    for t in TOPICS:
        assert replicas[t].equals_tail_of(procs.gateway_records(t)), t


def test_gateway_kill9_and_restart_mid_stream(procs: Procs) -> None:
    procs.start_source(TOPICS[:2], bars=1500, ticks=2, pace_s=0.002)
    procs.start_gateway()
    replica = Replica()
    restarted: list[float] = []

    def maybe_kill(r: Replica) -> None:
        if r.items == 150 and not restarted:
            procs.kill("gateway")  # SIGKILL: no commit, no goodbye
            restarted.append(time.monotonic())
            procs.start_gateway()

    with GatewayClient(procs.publish, procs.requests, timeout_s=2) as client:
        wait_for(
            lambda: published(client) > 100, 30, what="first updates", on_timeout=gateway_log(procs)
        )
        assert not procs.done_file.exists()
        consume_until_final(client, procs, "EUR-USD/BID/1m", replica, on_item=maybe_kill)
    assert restarted, "the gateway was never killed"
    assert replica.items > 150
    assert replica.equals_tail_of(procs.gateway_records("EUR-USD/BID/1m"))
    log = (procs.root / "gateway.log").read_text()
    assert log.count("starting:") == 2 and log.count("stopped:") == 0, "killed, not stopped"


def test_revision_reaches_consumers_flagged(procs: Procs) -> None:
    depth = 20
    procs.start_source(
        TOPICS[:1], bars=400, ticks=2, pace_s=0.001, revise_at_bar=300, revise_depth=depth
    )
    procs.start_gateway()
    full, closed = Replica(), Replica()
    revisions: list[BarUpdate] = []
    closed_revisions: list[BarUpdate] = []
    with GatewayClient(procs.publish, procs.requests, timeout_s=2) as client:
        wait_for(
            lambda: published(client) > 50, 30, what="first updates", on_timeout=gateway_log(procs)
        )
        status = client.status()
        assert status.topics["EUR-USD/BID/1m"].length < 300, "joined after the revision"
        with GatewayClient(procs.publish, procs.requests) as c2:
            closed_stream = c2.stream("EUR-USD", "1m", history=400, closed_only=True, timeout_s=15)
            closed.apply(next(closed_stream))  # joined before the revision; read the rest later
            for item in client.stream("EUR-USD", "1m", history=400, timeout_s=15):
                full.apply(item)
                if item.replaces > 1:
                    revisions.append(item)
                if procs.done_file.exists() and full.equals_tail_of(
                    procs.source_records("EUR-USD/BID/1m")
                ):
                    break
            for item in closed_stream:
                if item.kind != "history" and item.replaces:
                    closed_revisions.append(item)
                closed.apply(item)
                if closed.equals_tail_of(procs.source_records("EUR-USD/BID/1m")):
                    break
    assert len(revisions) == 1, [(r.start_offset, r.replaces) for r in revisions]
    rev = revisions[0]
    assert rev.start_offset == 300 - depth
    assert rev.replaces == depth + 1  # the revised bars and the open bar after them
    assert (rev.records["flags"][:depth] & FLAG_REVISED).all()
    assert len(closed_revisions) == 1
    crev = closed_revisions[0]
    assert crev.start_offset == 300 - depth and crev.replaces == depth
    # The revised bars, then any bars that closed in the same gateway commit (not revised).
    assert (crev.records["flags"][:depth] & FLAG_REVISED).all()
    assert not (crev.records["flags"][depth:] & FLAG_REVISED).any()
    final = procs.gateway_records("EUR-USD/BID/1m")
    assert (final["flags"][300 - depth : 300] & FLAG_REVISED).all()
    assert full.equals_tail_of(final)
