"""Socket fuzzers (issue 16): every socket a service exposes gets random bytes, wrong frame
counts, well-typed headers with absurd values, oversized frames, connect/disconnect floods,
a DEALER that never returns credit and a subscriber that never reads. Seeded (printed;
``BARSTREAM_TEST_SEED`` repeats one) and bounded in count and time.

The default run attacks one real resampler (its feed ROUTER and, through a process that took
its upstream's address, its feed client) and one real gateway (ROUTER, XPUB) with a few
thousand messages each; the slow test (test_socket_fuzz_demo.py) attacks the whole demo
under supervisord with over 100,000.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import zmq

from barstream.services.gateway.client import GatewayClient
from barstream.shared import protocol as p
from barstream.shared.errors import GatewayError
from tests.hostile import attack
from tests.hostile.fuzz import Fuzz, seed_from_env
from tests.hostile.support import FakeUpstream, bars, config, spawn, write
from tests.support.ops import SCRAPE_ERRORS, sample, scrape
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)

#: Messages per attacked socket in the default run.
N = 3000
#: A service's log may grow this much per 1,000 hostile messages at most (rate limited:
#: one line per peer per 10 s, plus the first of each).
LOG_BYTES_PER_1000 = 4000


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # its stacks into its log (PYTHONFAULTHANDLER)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
    return proc.wait()


def total(port: int, name: str) -> float:
    return sum(v for _, v in scrape(port).get(name, []))


def m1_length(port: int) -> float | None:
    return sample(
        scrape(port),
        "barstream_committed_length_records",
        symbol="EUR-USD",
        side="BID",
        timeframe="1m",
    )


def test_fuzz_a_running_resampler(ipc_dir: Path) -> None:
    seed = seed_from_env()
    print(f"socket fuzz seed {seed} (BARSTREAM_TEST_SEED={seed} repeats it)")
    fuzz = Fuzz(seed)
    data = config(ipc_dir, upstream="resampler")
    cfg = write(ipc_dir / "c.toml", data)
    port = data["resampler"]["endpoints"]["metrics_port"]
    feed = data["resampler"]["endpoints"]["feed"]
    log = ipc_dir / "resampler.log"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake = FakeUpstream(ctx, f"ipc://{ipc_dir}/fake.feed")
    idle = attack.Idle(ctx)
    proc = spawn("resampler", cfg, log)
    try:
        fake.hello(20)
        fake.batch("EUR-USD/BID/1m", 0, bars(3))
        wait_for(lambda: m1_length(port) == 3, 20, what="the good batch", ignore=SCRAPE_ERRORS)
        size0 = log.stat().st_size
        idle.no_credit(feed)
        # the feed ROUTER: hostile DEALERs, a connect/disconnect flood
        sent = attack.feed_router(ctx, feed, fuzz, N, 30)
        sent += attack.connect_flood(ctx, feed, fuzz, zmq.DEALER, 200)
        # the feed client: what a process holding its upstream's address sends it
        down = 0
        # (a bad batch makes the follower reconnect: the fake follows its newest hello, and
        # gives it a few ms now and then so most messages reach a live connection)
        for i in range(N):
            if i % 4 == 0:
                fake.sock.poll(2)
            fake.drain()
            fake.sock.send_multipart([fake.ident, *fuzz.feed_down(fake.conn, "EUR-USD/BID/1m")])
            down += 1
        assert proc.poll() is None, log.read_text()[-3000:]
        # still serving: a clean hello on its feed gets a batch of the good store
        with ctx.socket(zmq.DEALER) as probe:
            probe.connect(feed)
            probe.send(p.encode(p.Hello(name="probe", conn=1, credit=8)))

            def batch_of_m1() -> bool:
                while probe.poll(200):
                    frames = probe.recv_multipart()
                    msg = p.decode_down(frames[0])
                    if isinstance(msg, p.Batch) and msg.stream == "EUR-USD/BID/1m":
                        return True
                return False

            wait_for(batch_of_m1, 20, what="a batch for a clean follower", every_s=0)
        # and still following: a fresh upstream store (new id) after the attack goes through
        fake.drain()
        fake.sock.send_multipart([fake.ident, p.encode(p.Reset(reason="fuzz over"))])
        conn_before = fake.conn

        def new_hello() -> bool:
            fake.drain()
            return fake.conn != conn_before

        wait_for(new_hello, 20, what="a new hello after the reset")
        good = bars(5)
        fake.batch("EUR-USD/BID/1m", 0, good)
        wait_for(
            lambda: m1_length(port) == 5, 20, what="bars after the attack", ignore=SCRAPE_ERRORS
        )
        malformed = total(port, "barstream_malformed_messages_total")
        rejected = total(port, "barstream_rejected_messages_total")
        print(
            f"sent {sent} to the feed ROUTER, {down} to the feed client; malformed {malformed}, rejected {rejected}"
        )
        assert malformed > (sent + down) / 4
        assert rejected > 0
        assert proc.poll() is None
        text = log.read_text()
        assert "Traceback" not in text, text[-5000:]
        grown = log.stat().st_size - size0
        assert grown < LOG_BYTES_PER_1000 * (sent + down) / 1000, grown
        # the rate-limited summary, written once the peer's 10 s have passed
        wait_for(lambda: "more malformed" in log.read_text(), 15, what="a summary line")
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
        idle.close()
        fake.close()
        ctx.destroy(linger=0)


def test_fuzz_a_running_gateway(ipc_dir: Path) -> None:
    seed = seed_from_env()
    print(f"socket fuzz seed {seed} (BARSTREAM_TEST_SEED={seed} repeats it)")
    fuzz = Fuzz(seed)
    data = config(ipc_dir, upstream="gateway")
    cfg = write(ipc_dir / "c.toml", data)
    port = data["gateway"]["endpoints"]["metrics_port"]
    log = ipc_dir / "gateway.log"
    pub, req = data["gateway"]["publish"], data["gateway"]["requests"]
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake = FakeUpstream(ctx, f"ipc://{ipc_dir}/fake.feed")
    idle = attack.Idle(ctx)
    proc = spawn("gateway", cfg, log)
    try:
        fake.hello(20)
        fake.batch("EUR-USD/BID/1m", 0, bars(3))
        wait_for(lambda: m1_length(port) == 3, 20, what="the good batch", ignore=SCRAPE_ERRORS)
        size0 = log.stat().st_size
        idle.non_reader(pub)
        sent = attack.gateway_router(ctx, req, fuzz, "EUR-USD/BID/1m", N, 30)
        sent += attack.xpub(ctx, pub, fuzz, N, 30)
        sent += attack.connect_flood(ctx, req, fuzz, zmq.DEALER, 100)
        sent += attack.connect_flood(ctx, pub, fuzz, zmq.XSUB, 100)
        # live updates keep flowing to the non-reading subscriber's peers meanwhile
        for i in range(50):
            fake.drain()
            fake.batch("EUR-USD/BID/1m", 3 + i, bars(1, 3 + i))
        assert proc.poll() is None, log.read_text()[-3000:]
        with GatewayClient(pub, req, timeout_s=5) as client:
            last = wait_for(
                lambda: len(client.history("EUR-USD", "1m", last=100)) == 53,
                20,
                what="53 bars served after the attack",
                ignore=(TimeoutError, GatewayError),
            )
            assert last
            assert {t.topic for t in client.list_topics("EUR-USD/BID/1m")} == {"EUR-USD/BID/1m"}
            status = client.status()
        refused = sum(status.errors.values())
        print(f"sent {sent} to the gateway's sockets; refused {refused}: {status.errors}")
        assert refused > N / 2
        text = log.read_text()
        assert "Traceback" not in text, text[-5000:]
        grown = log.stat().st_size - size0
        assert grown < LOG_BYTES_PER_1000 * sent / 1000, grown
        assert proc.poll() is None
        assert stop(proc) == 0, log.read_text()[-3000:]
    finally:
        stop(proc)
        idle.close()
        fake.close()
        ctx.destroy(linger=0)
