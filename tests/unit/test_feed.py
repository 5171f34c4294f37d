"""Feed server and client in one process over real ipc:// sockets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from barstream.shared import protocol as p
from barstream.shared.checkpoint import UpstreamMark
from barstream.shared.errors import BindError
from barstream.shared.feed_client import FeedClient
from barstream.shared.feed_server import BATCH_MAX_RECORDS, FeedServer, start_offset
from barstream.shared.header import StoreMeta
from barstream.shared.storeset import StoreSet
from tests.support.plan import make_records
from tests.support.wait import async_wait_for

META = StoreMeta("EUR-USD", "BID", "1m")
KEY = META.key


def recs(start: int, n: int, salt: int = 0):
    return make_records(99, salt, 0, start, n)


class Replica:
    """A downstream StoreSet fed by a FeedClient."""

    def __init__(self, ctx, endpoint: str, root: Path, **kw) -> None:
        self.stores = StoreSet.open(root, "down")
        self.client = FeedClient(
            ctx, endpoint, self.stores.upstream, self.handle, name="down", on_idle=self.idle, **kw
        )

    async def handle(self, batch, records, attachments) -> None:
        store = self.stores.get(batch.stream) or self.stores.create(
            StoreMeta.from_key(batch.stream)
        )
        store.write(batch.start, records)
        self.stores.touch(batch.stream)

    async def idle(self) -> None:
        if self.stores.pending():
            self.stores.commit()

    def bytes(self, key: str = KEY) -> bytes:
        store = self.stores.get(key)
        return store.records.tobytes() if store is not None else b""


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


def upstream(tmp_path: Path, ipc_dir: Path, n: int = 0):
    """A context, the feed's endpoint, and an upstream StoreSet whose META store holds
    ``n`` committed records."""
    ctx = zmq.Context()
    up = StoreSet.open(tmp_path / "up", "up")
    s = up.ensure(META)
    if n:
        s.append(recs(0, n))
        up.commit()
    return ctx, f"ipc://{ipc_dir}/f", up, s


def serve(ctx, endpoint: str, up: StoreSet) -> tuple[FeedServer, asyncio.Task[None]]:
    """A FeedServer over ``up`` and the task running it (call inside the event loop)."""
    server = FeedServer(ctx, endpoint, up)
    return server, asyncio.create_task(server.run())


def test_replicates_then_resumes_after_a_rewind(tmp_path: Path, ipc_dir: Path) -> None:
    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir, 3 * BATCH_MAX_RECORDS + 5)
        server, serving = serve(ctx, endpoint, up)
        server.done = True
        down = Replica(ctx, endpoint, tmp_path / "down")
        await down.client.run(until_caught_up=True)
        assert down.bytes() == s.records.tobytes()
        assert down.client.batches_in >= 4 and server.records_out == s.length
        # A revision deep in history and a provisional tail update, committed upstream.
        s.write(100, recs(100, 50, 1))
        up.commit()
        s.replace_from(140, np.concatenate([s.records[140:148].copy(), recs(150, 3, 2)]))
        up.commit()
        down2 = Replica(ctx, endpoint, tmp_path / "down")  # a restart: resume from checkpoint
        down.stores.close()
        await down2.client.run(until_caught_up=True)
        assert down2.bytes() == s.records.tobytes()
        assert down2.client.records_in < 1000  # resumed from the rewind, not from 0
        down2.stores.close()
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())


def test_live_rewinds_reach_a_connected_downstream(tmp_path: Path, ipc_dir: Path) -> None:
    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir)
        server, serving = serve(ctx, endpoint, up)
        down = Replica(ctx, endpoint, tmp_path / "down")
        following = asyncio.create_task(down.client.run())
        rng = np.random.default_rng(5)
        for i in range(40):
            if s.length and rng.random() < 0.4:
                s.write(int(rng.integers(0, s.length)), recs(0, int(rng.integers(0, 30)), i))
            s.append(recs(s.length, int(rng.integers(1, 50)), 100 + i))
            up.commit()
            await asyncio.sleep(0)  # not a wait: the server sends between two commits
        s.truncate(s.length - 5)  # ends in a pure truncation
        up.commit()
        await async_wait_for(
            lambda: down.bytes() == s.records.tobytes(), 10, what="the downstream to converge"
        )
        down.client.close()
        await following
        server.close()
        await serving
        up.close()
        down.stores.close()
        ctx.destroy(linger=0)

    run(main())


def test_start_offset_rules(tmp_path: Path) -> None:
    up = StoreSet.open(tmp_path, "up")
    s = up.ensure(META)
    s.append(recs(0, 100))
    up.commit()
    sid = s.store_id.hex()
    assert start_offset(s, None) == 0
    assert start_offset(s, UpstreamMark("other", 50, 0)) == 0  # another store: from scratch
    assert start_offset(s, UpstreamMark(sid, 50, 0)) == 50
    assert start_offset(s, UpstreamMark(sid, 500, 0)) == 100  # beyond what is committed
    assert start_offset(s, UpstreamMark(sid, -3, 0)) == 0  # nonsense from the wire
    assert start_offset(s, UpstreamMark(sid, 50, 9)) == 0  # a generation we never had
    s.write(30, recs(30, 10, 1))
    assert start_offset(s, UpstreamMark(sid, 50, 0)) == 30  # uncommitted rewrite: stable prefix
    up.commit()
    assert start_offset(s, UpstreamMark(sid, 50, 0)) == 30  # older generation: from the rewind
    assert start_offset(s, UpstreamMark(sid, 20, 0)) == 20  # below the rewind: nothing lost
    assert start_offset(s, UpstreamMark(sid, 40, 1)) == 40
    up.close()


def raw_socket(ctx, kind: int, endpoint: str, bind: bool = False):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def test_credit_limits_batches_in_flight(tmp_path: Path, ipc_dir: Path) -> None:
    async def main() -> None:
        ctx, endpoint, up, _ = upstream(tmp_path, ipc_dir, 5 * BATCH_MAX_RECORDS)
        server, serving = serve(ctx, endpoint, up)
        peer = raw_socket(ctx, zmq.DEALER, endpoint)
        peer.send(p.encode(p.Hello(name="raw", conn=1, credit=1)))

        async def recv_batches(n: int) -> list[p.Batch]:
            out: list[p.Batch] = []

            def received() -> bool:
                while len(out) < n:
                    try:
                        frames = peer.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        return False
                    msg = p.decode_down(frames[0])
                    if isinstance(msg, p.Batch):
                        out.append(msg)
                return True

            await async_wait_for(
                received,
                5,
                what=f"{n} batches",
                every_s=0.005,
                on_timeout=lambda: f"got {len(out)} of {n} batches",
            )
            return out

        async def no_batch_for(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    frames = peer.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    # Not a wait: nothing may arrive for ``seconds``; look again soon.
                    await asyncio.sleep(0.005)
                    continue
                assert not isinstance(p.decode_down(frames[0]), p.Batch), "sent without credit"

        first = await recv_batches(1)
        assert (first[0].start, first[0].count) == (0, BATCH_MAX_RECORDS)
        await no_batch_for(0.3)
        peer.send(p.encode(p.Credit(conn=1, n=2)))
        more = await recv_batches(2)
        assert [b.start for b in more] == [BATCH_MAX_RECORDS, 2 * BATCH_MAX_RECORDS]
        await no_batch_for(0.2)
        peer.close(linger=0)
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())


def test_malformed_to_server_is_counted_dropped_and_serving_goes_on(
    tmp_path: Path, ipc_dir: Path
) -> None:
    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir, 1000)
        server, serving = serve(ctx, endpoint, up)
        bad = raw_socket(ctx, zmq.DEALER, endpoint)
        bad.send(b"\xff\x00garbage")
        bad.send_multipart([b"two", b"frames"])
        bad.send(msgpack({"t": "credit", "v": 7, "session": 1, "n": 1}))
        bad.send(p.encode(p.Hello(name="x", conn=1, credit=-5)))  # refused, not malformed
        bad.send(p.encode(p.Hello(name="x", conn=1, prefixes=["ZZZ"])))  # valid hello
        bad.send(p.encode(p.Credit(conn=1, n=10**9)))  # absurd credit
        await async_wait_for(
            lambda: server.malformed >= 4,
            5,
            what="4 malformed messages counted",
            on_timeout=lambda: f"malformed={server.malformed}",
        )
        errors: list[str] = []
        while len(errors) < 3:
            msg = p.decode_down(await asyncio.to_thread(bad.recv))
            if isinstance(msg, p.Error):
                errors.append(msg.code)
        assert errors == ["malformed", "malformed", "bad-credit"]
        server.done = True
        down = Replica(ctx, endpoint, tmp_path / "down")
        await down.client.run(until_caught_up=True)
        assert down.bytes() == s.records.tobytes()
        bad.close(linger=0)
        down.stores.close()
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())


def msgpack(obj: object) -> bytes:
    import msgspec

    return msgspec.msgpack.encode(obj)


def test_malformed_to_client_is_counted_dropped_and_following_goes_on(
    tmp_path: Path, ipc_dir: Path
) -> None:
    """A hand-driven upstream sends garbage, wrong versions, a batch whose body does not
    match its header and one for a stream the client does not follow; the client counts
    each, keeps running, and applies the good batch that follows."""

    async def main() -> None:
        ctx = zmq.Context()
        endpoint = f"ipc://{ipc_dir}/f"
        upstream = raw_socket(ctx, zmq.ROUTER, endpoint, bind=True)
        down = Replica(ctx, endpoint, tmp_path / "down", prefixes=["EUR-USD/"])
        following = asyncio.create_task(down.client.run())

        async def hello() -> tuple[bytes, p.Hello]:
            ident, raw = await asyncio.to_thread(upstream.recv_multipart)
            msg = p.decode_up(raw)
            while not isinstance(msg, p.Hello):
                ident, raw = await asyncio.to_thread(upstream.recv_multipart)
                msg = p.decode_up(raw)
            return ident, msg

        ident, h = await hello()
        good = recs(0, 10)

        def batch(conn: int, start: int, count: int, stream: str = KEY) -> bytes:
            return p.encode(p.Batch(conn, stream, "aa" * 16, 0, start, count, count))

        upstream.send_multipart([ident, b"\x93garbage"])
        upstream.send_multipart(
            [ident, msgpack({"t": "hb", "v": 5, "instance": "i", "wall_ms": 0})]
        )
        upstream.send_multipart([ident, batch(h.conn, 0, 3, "XAU-USD/BID/1m"), good[:3].tobytes()])
        upstream.send_multipart([ident, batch(h.conn, 0, 10), good.tobytes()])
        await async_wait_for(
            lambda: down.bytes() == good.tobytes(),
            5,
            what="the good batch to be applied",
            on_timeout=lambda: f"malformed={down.client.malformed}",
        )
        assert down.client.malformed == 3
        # A body that does not match its header: counted, and the client reconnects.
        upstream.send_multipart([ident, batch(h.conn, 10, 5), good[:2].tobytes()])
        _ident2, h2 = await hello()
        assert h2.conn == h.conn + 1 and h2.streams[KEY][1] == 10
        assert down.client.malformed == 4
        down.client.close()
        await following
        upstream.close(linger=0)
        down.stores.close()
        ctx.destroy(linger=0)

    run(main())


def test_client_reconnects_to_a_restarted_upstream(tmp_path: Path, ipc_dir: Path) -> None:
    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir, 100)
        server, serving = serve(ctx, endpoint, up)
        down = Replica(ctx, endpoint, tmp_path / "down")
        following = asyncio.create_task(down.client.run())
        await async_wait_for(
            lambda: down.bytes() == s.records.tobytes(), 5, what="the downstream to replicate"
        )
        server.close()
        await serving
        s.append(recs(100, 50))
        up.commit()
        server, serving = serve(ctx, endpoint, up)  # a new instance, same store
        t0 = time.monotonic()
        await async_wait_for(
            lambda: down.bytes() == s.records.tobytes(), 5, what="the client to reconnect"
        )
        assert time.monotonic() - t0 < 2.0  # the monitor noticed; no peer timeout needed
        assert down.client.reconnects >= 1
        down.client.close()
        await following
        server.close()
        await serving
        up.close()
        down.stores.close()
        ctx.destroy(linger=0)

    run(main())


@pytest.mark.parametrize("prefixes", [["EUR-USD/"], ["XAU-USD/BID/"]])
def test_prefixes_select_streams(tmp_path: Path, ipc_dir: Path, prefixes: list[str]) -> None:
    async def main() -> None:
        ctx, endpoint, up, _ = upstream(tmp_path, ipc_dir)
        for sym in ("EUR-USD", "XAU-USD"):
            up.ensure(StoreMeta(sym, "BID", "1m")).append(recs(0, 20))
        up.commit()
        server, serving = serve(ctx, endpoint, up)
        server.done = True
        down = Replica(ctx, endpoint, tmp_path / "down", prefixes=prefixes)
        await down.client.run(until_caught_up=True)
        assert sorted(down.stores.keys()) == [
            k for k in sorted(up.keys()) if k.startswith(prefixes[0])
        ]
        down.stores.close()
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())


def test_bind_failure_names_the_configuration_key(tmp_path: Path) -> None:
    ctx = zmq.Context()
    up = StoreSet.open(tmp_path / "up", "up")
    first = FeedServer(ctx, "tcp://127.0.0.1:0", up, config_key="resampler.endpoints.feed")
    with pytest.raises(BindError) as e:
        FeedServer(ctx, first.bound, up, config_key="resampler.endpoints.feed")
    assert e.value.key == "resampler.endpoints.feed" and e.value.address == first.bound
    assert str(e.value).startswith(f"resampler.endpoints.feed = {first.bound!r}: Address already")
    assert "another barstream or program holds it" in str(e.value)
    with pytest.raises(BindError, match="an address this host can bind"):
        FeedServer(ctx, "tcpx://nowhere", up, config_key="aggregator.endpoints.feed")
    first.close()
    up.close()
    ctx.destroy(linger=0)


def test_upstream_age_and_lag_grow_across_reconnects_while_the_upstream_is_gone(
    tmp_path: Path, ipc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconnect is no message from the upstream: the age of a dead upstream keeps
    growing past many reconnect attempts (and the lag with it); a new upstream resets it."""
    from barstream.shared import feed_client
    from barstream.shared.metrics import Metrics

    monkeypatch.setattr(feed_client, "PEER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(feed_client, "RETRY_MAX_S", 0.1)
    metrics = Metrics("down")

    def gauge(name: str) -> float:  # by name, whatever its labels
        values = [
            sample.value
            for family in metrics.registry.collect()
            for sample in family.samples
            if sample.name == "barstream_" + name
        ]
        assert len(values) == 1, values
        return values[0]

    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir, 100)
        server, serving = serve(ctx, endpoint, up)
        down = Replica(ctx, endpoint, tmp_path / "down", metrics=metrics)
        assert down.client.upstream_age_s == -1.0  # never ran
        following = asyncio.create_task(down.client.run())
        await async_wait_for(
            lambda: down.bytes() == s.records.tobytes(), 5, what="the downstream to replicate"
        )
        assert down.client.upstream_age_s < 1.5 and down.client.lag_s == 0.0
        server.close()
        await serving
        reconnects0 = down.client.reconnects
        ages: list[float] = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            ages.append(down.client.upstream_age_s)
            await asyncio.sleep(0.05)
        assert ages == sorted(ages)  # monotonic across the reconnects
        assert down.client.reconnects - reconnects0 >= 3  # several attempts, none reset it
        assert ages[-1] > 2.4  # > 3 × the (patched) PEER_TIMEOUT_S
        assert down.client.lag_s >= ages[-1]
        await asyncio.sleep(0.6)  # the gauges follow (updated during the backoff too)
        assert gauge("upstream_heartbeat_age_seconds") > 2.4
        assert gauge("feed_lag_seconds") > 2.4
        server, serving = serve(ctx, endpoint, up)  # the upstream is back
        await async_wait_for(
            lambda: down.client.upstream_age_s < 1.5, 5, what="the age to drop back"
        )
        await async_wait_for(lambda: down.client.lag_s == 0.0, 5, what="the lag to drop back")
        await async_wait_for(
            lambda: gauge("upstream_heartbeat_age_seconds") < 1.5, 5, what="the gauge to drop"
        )
        down.client.close()
        await following
        server.close()
        await serving
        up.close()
        down.stores.close()
        ctx.destroy(linger=0)

    run(main())


def test_upstream_age_counts_from_the_start_when_the_upstream_never_came_up(
    tmp_path: Path, ipc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from barstream.shared import feed_client

    monkeypatch.setattr(feed_client, "PEER_TIMEOUT_S", 0.3)
    monkeypatch.setattr(feed_client, "RETRY_MAX_S", 0.1)

    async def main() -> None:
        ctx = zmq.Context()
        down = Replica(ctx, f"ipc://{ipc_dir}/nobody", tmp_path / "down")
        following = asyncio.create_task(down.client.run())
        await asyncio.sleep(1.2)
        assert down.client.reconnects >= 2
        assert 1.1 < down.client.upstream_age_s < 3.0
        assert down.client.lag_s >= 1.1
        down.client.close()
        await following
        down.stores.close()
        ctx.destroy(linger=0)

    run(main())


@pytest.mark.parametrize(
    ("batches", "credit"),
    [
        pytest.param(3, 1, id="lacking-records"),
        pytest.param(2, 100, id="sent-everything"),
    ],
)
def test_drain_waits_for_a_downstream_that_timed_out_and_comes_back(
    tmp_path: Path, ipc_dir: Path, monkeypatch: pytest.MonkeyPatch, batches: int, credit: int
) -> None:
    """A downstream too busy to answer for PEER_TIMEOUT_S (here 0.3 s) is dropped as a peer,
    but in drain mode it is owed the records: the server waits for it to come back and take
    them, instead of taking its absence for the end of the work (a rebuild whose upstream
    exited there left the transformer 1,892 days short). So is one with credit for every
    batch that was *sent* everything before it went silent: it may not have applied it."""
    from barstream.shared import feed_server

    monkeypatch.setattr(feed_server, "PEER_TIMEOUT_S", 0.3)

    async def main() -> None:
        ctx, endpoint, up, s = upstream(tmp_path, ipc_dir, batches * BATCH_MAX_RECORDS)
        server, serving = serve(ctx, endpoint, up)
        server.done = True
        silent = raw_socket(ctx, zmq.DEALER, endpoint)
        silent.send(p.encode(p.Hello(name="down", conn=1, credit=credit)))
        await async_wait_for(lambda: bool(server.peers), 5, what="the peer's hello")
        drained = asyncio.create_task(server.wait_drained(timeout_s=30))
        await async_wait_for(lambda: "down" in server.owed, 5, what="the peer to time out")
        assert "timed out" in server.owed["down"] and not drained.done()
        silent.close(linger=0)
        down = Replica(ctx, endpoint, tmp_path / "down")  # back, under the same name
        await down.client.run(until_caught_up=True)
        assert await asyncio.wait_for(drained, 10) is True
        assert down.bytes() == s.records.tobytes() and server.owed == {}
        down.stores.close()
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())


def test_drain_gives_up_on_a_downstream_that_never_comes_back(
    tmp_path: Path, ipc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from barstream.shared import feed_server

    monkeypatch.setattr(feed_server, "PEER_TIMEOUT_S", 0.3)

    async def main() -> None:
        ctx, endpoint, up, _ = upstream(tmp_path, ipc_dir, 2 * BATCH_MAX_RECORDS)
        server, serving = serve(ctx, endpoint, up)
        server.done = True
        silent = raw_socket(ctx, zmq.DEALER, endpoint)
        silent.send(p.encode(p.Hello(name="down", conn=1, credit=1)))
        await async_wait_for(lambda: bool(server.peers), 5, what="the peer's hello")
        began = time.monotonic()
        assert await server.wait_drained(timeout_s=0.5) is False
        assert 0.5 < time.monotonic() - began < 10
        assert list(server.owed) == ["down"]
        silent.close(linger=0)
        server.close()
        await serving
        up.close()
        ctx.destroy(linger=0)

    run(main())
