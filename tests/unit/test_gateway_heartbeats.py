"""Heartbeats that follow the changes, not the topic count (issue 10): at 840 topics a quiet
heartbeat names none, a moved topic is named for HEARTBEAT_WINDOW heartbeats, every
HEARTBEAT_FULL_EVERY-th names all; a consumer that loses more heartbeats than the window
resyncs every live topic, and one that loses fewer still sees the seq it missed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zmq

from barstream.services.gateway.driver import Driver
from barstream.services.gateway.follower import Follower
from barstream.services.gateway.publish import Publisher
from barstream.shared import config as config_mod
from barstream.shared import gateway_protocol as gp
from barstream.shared.header import StoreMeta
from barstream.shared.metrics import GatewayMetrics, Metrics
from barstream.shared.record import empty
from barstream.shared.storeset import StoreSet
from tests.support.ops import REPO

TFS = ["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y"]
SYMBOLS = config_mod.load(REPO / "config" / "universe.toml").pipeline.symbols
KEYS = [f"{s}/{side}/{tf}" for s in SYMBOLS for side in ("BID", "ASK") for tf in TFS]


def test_heartbeats_at_840_topics_carry_what_moved(tmp_path: Path) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    pub.bind("inproc://hb")
    stores = StoreSet.open(tmp_path, "gateway")
    try:
        for key in KEYS:
            stores.ensure(StoreMeta.from_key(key))
        stores.commit()
        p = Publisher(pub, stores, GatewayMetrics(Metrics("gateway")), logging.getLogger("t"))
        for key in KEYS:
            p.topic(key)
        full = p.heartbeat()
        assert (full.hb, full.window, len(full.seqs)) == (1, 0, 840)
        quiet = p.heartbeat()
        assert (quiet.hb, quiet.window, quiet.seqs) == (2, gp.HEARTBEAT_WINDOW, {})
        full_size, quiet_size = len(gp.encode(full)), len(gp.encode(quiet))
        assert full_size > 12_000 and quiet_size < 150 and len(KEYS) == 840, (full_size, quiet_size)

        moved = KEYS[7]
        r = empty(1)
        r["ts_ms"] = 60_000
        stores.stores[moved].append(r)
        p.changed(moved, 0)
        plan = p.plan()
        stores.commit()
        p.publish(plan)
        named = [p.heartbeat() for _ in range(gp.HEARTBEAT_WINDOW + 1)]
        assert [hb.seqs for hb in named[:-1]] == [{moved: 1}] * gp.HEARTBEAT_WINDOW
        assert named[-1].seqs == {}  # out of the window
        while True:
            hb = p.heartbeat()
            if hb.window == 0:
                break
            assert hb.seqs == {}
        assert hb.hb == gp.HEARTBEAT_FULL_EVERY + 1 and hb.seqs[moved] == 1 and len(hb.seqs) == 840
    finally:
        stores.close()
        pub.close(linger=0)
        ctx.term()


def _frames(hb: gp.Heartbeat) -> list[zmq.Frame]:
    return [zmq.Frame(gp.HEARTBEAT_TOPIC), zmq.Frame(gp.encode(hb))]


def _live(topic: str, seq: int) -> Follower:
    from barstream.shared.record import empty as records

    f = Follower(topic, 1, closed_only=False)
    f.request(1)
    r = records(1)
    f.on_reply(gp.Records(id=1, topic=topic, epoch="e", seq=seq, start=0, count=1, end=1), r)
    assert f.state == "live"
    return f


def test_lost_heartbeats_resync_and_a_named_seq_is_still_checked() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    a, b = _live("A-B/BID/1m", 4), _live("C-D/BID/1m", 9)
    d = Driver(ctx, "inproc://none-pub", "inproc://none-req", [a, b], rcvhwm=100)
    try:

        def hb(n: int, seqs: dict[str, int], window: int = gp.HEARTBEAT_WINDOW) -> None:
            beat = gp.Heartbeat(
                instance="i", wall_ms=0, interval_ms=1000, seqs=seqs, hb=n, window=window
            )
            assert d._on_publication(_frames(beat)) == []

        hb(1, {"A-B/BID/1m": 4, "C-D/BID/1m": 9}, window=0)
        hb(2, {})
        hb(4, {"C-D/BID/1m": 9})  # one lost, within the window: nothing missed
        assert (a.state, b.state, d.gaps) == ("live", "live", 0)
        hb(6, {"A-B/BID/1m": 5})  # one lost again; it named seq 5 of A, we hold 4
        assert (a.state, b.state, d.gaps) == ("init", "live", 1)
        a.request(2)
        a.on_reply(
            gp.Records(id=2, topic="A-B/BID/1m", epoch="e", seq=5, start=1, count=0, end=1),
            np.zeros(0, dtype=empty(0).dtype),
        )
        assert a.state == "live"
        hb(6 + gp.HEARTBEAT_WINDOW + 1, {})  # more lost than the window covers
        assert (a.state, b.state, d.gaps) == ("init", "init", 3)
    finally:
        d.close()
        ctx.term()
