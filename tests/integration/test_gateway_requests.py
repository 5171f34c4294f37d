"""Gateway requests against a real gateway process: good answers, and ≥ 20 kinds of
malformed or hostile requests, each refused with an error reply naming what was wrong (or
dropped, for oversize frames) while the gateway keeps serving."""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from barstream.services.gateway.client import GatewayClient
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import GatewayError
from tests.support.bar_source import Procs, tmpfs_procs
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(90)

TOPICS = ["EUR-USD/BID/1m", "EUR-USD/BID/5m"]
pack = msgspec.msgpack.encode


@pytest.fixture(scope="module")
def gateway() -> Iterator[Procs]:
    ipc = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    try:
        with tmpfs_procs(ipc) as p:
            p.start_source(TOPICS, bars=200, ticks=2)
            p.start_gateway()
            p.wait_done(timeout_s=60)
            with GatewayClient(p.publish, p.requests, timeout_s=2) as c:
                wait_for(
                    lambda: (
                        all(t.count == 200 for t in c.list_topics()) and len(c.list_topics()) == 2
                    ),
                    30,
                    what="the gateway to serve every bar",
                    ignore=(TimeoutError,),
                    on_timeout=lambda: p.log_tail("gateway"),
                )
            yield p
    finally:
        shutil.rmtree(ipc, ignore_errors=True)


class Raw:
    """A raw DEALER (or REQ) socket: send any frames, receive with a timeout."""

    def __init__(self, endpoint: str, kind: int = zmq.DEALER) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def ask(self, frames: list[bytes], timeout_s: float = 3.0) -> list[bytes] | None:
        self.sock.send_multipart(frames)
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.destroy(linger=0)


def good(raw: Raw) -> None:
    """A good request right after a bad one is answered normally."""
    frames = raw.ask([gp.encode(gp.History(topic="EUR-USD/BID/1m", last=5, id=77))])
    assert frames is not None, "the gateway stopped answering"
    reply = gp.decode_reply(frames[0])
    assert isinstance(reply, gp.Records) and reply.id == 77 and reply.count == 5
    assert len(frames[1]) == 5 * 64


HOSTILE: list[tuple[str, list[bytes], str]] = [
    ("garbage bytes", [b"\xc1\xff\x00garbage"], "malformed"),
    ("empty frame", [b""], "bad-frames"),
    ("too many frames", [b"a", b"b", b"c"], "bad-frames"),
    ("two frames, no REQ delimiter", [gp.encode(gp.StatusRequest()), b"x"], "bad-frames"),
    ("msgpack array, not a map", [pack([1, 2, 3])], "malformed"),
    ("msgpack string", [pack("history")], "malformed"),
    (
        "truncated msgpack",
        [gp.encode(gp.History(topic="EUR-USD/BID/1m", last=5))[:-3]],
        "malformed",
    ),
    ("no type tag", [pack({"v": 1, "topic": "EUR-USD/BID/1m"})], "unknown-type"),
    ("unknown type", [pack({"t": "delete", "v": 1, "id": 3})], "unknown-type"),
    ("type tag of wrong type", [pack({"t": 7, "v": 1})], "unknown-type"),
    ("wrong version", [pack({"t": "status", "v": 2, "id": 4})], "unsupported-version"),
    ("version as text", [pack({"t": "status", "v": "1"})], "unsupported-version"),
    (
        "topic of wrong type",
        [pack({"t": "history", "v": 1, "topic": 12, "last": 1})],
        "invalid-field",
    ),
    ("id of wrong type", [pack({"t": "status", "v": 1, "id": "x"})], "invalid-field"),
    ("unknown field", [pack({"t": "status", "v": 1, "evil": True})], "invalid-field"),
    (
        "float time",
        [pack({"t": "history", "v": 1, "topic": "EUR-USD/BID/1m", "start_ms": 1.5})],
        "invalid-field",
    ),
    (
        "time beyond int64",
        [pack({"t": "history", "v": 1, "topic": "EUR-USD/BID/1m", "start_ms": 2**64 - 1})],
        "invalid-field",
    ),
    ("unknown topic", [gp.encode(gp.History(topic="XXX-YYY/BID/1m", last=1))], "unknown-topic"),
    ("path-like topic", [gp.encode(gp.History(topic="../../etc/passwd", last=1))], "unknown-topic"),
    ("huge N", [gp.encode(gp.History(topic="EUR-USD/BID/1m", last=10**12))], "too-large"),
    ("negative N", [gp.encode(gp.History(topic="EUR-USD/BID/1m", last=-5))], "bad-range"),
    (
        "start after end",
        [gp.encode(gp.History(topic="EUR-USD/BID/1m", start_ms=10, end_ms=5))],
        "bad-range",
    ),
    (
        "last and a range",
        [gp.encode(gp.History(topic="EUR-USD/BID/1m", last=3, start_ms=0))],
        "invalid-field",
    ),
    (
        "snapshot N too large",
        [gp.encode(gp.Snapshot(topic="EUR-USD/BID/1m", last=10**9))],
        "too-large",
    ),
    (
        "since_seq ahead of the topic",
        [gp.encode(gp.Snapshot(topic="EUR-USD/BID/1m", since_seq=10**9, from_offset=0, epoch="E"))],
        "stale-epoch",
    ),
    (
        "resync without from_offset",
        [pack({"t": "snapshot", "v": 1, "topic": "EUR-USD/BID/1m", "since_seq": 0, "epoch": "?"})],
        "stale-epoch",
    ),
    ("deep nesting", [b"\x91" * 5000 + b"\x00"], "malformed"),
    (
        "map of 5000 keys",
        [pack({"t": "status", "v": 1, **{f"k{i}": i for i in range(5000)}})],
        "invalid-field",
    ),
]


@pytest.mark.parametrize(("name", "frames", "code"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_error_and_gateway_keeps_serving(
    gateway: Procs, name: str, frames: list[bytes], code: str
) -> None:
    raw = Raw(gateway.requests)
    try:
        reply_frames = raw.ask(frames)
        assert reply_frames is not None, f"{name}: no error reply"
        assert len(reply_frames) == 1
        reply = gp.decode_reply(reply_frames[0])
        assert isinstance(reply, gp.Error), reply
        assert reply.code == code, reply
        assert reply.message  # says what was wrong
        good(raw)
    finally:
        raw.close()


def test_resync_requests_checked_against_the_topic(gateway: Procs) -> None:
    raw = Raw(gateway.requests)
    try:
        frames = raw.ask([gp.encode(gp.Snapshot(topic="EUR-USD/BID/1m", last=3, id=1))])
        assert frames is not None
        snap = gp.decode_reply(frames[0])
        assert isinstance(snap, gp.Records) and snap.count == 3 and snap.seq > 0
        for req, code in [
            (
                gp.Snapshot(
                    topic=snap.topic, since_seq=snap.seq + 5, from_offset=0, epoch=snap.epoch
                ),
                "bad-range",
            ),
            (
                gp.Snapshot(topic=snap.topic, since_seq=0, from_offset=-1, epoch=snap.epoch),
                "invalid-field",
            ),
        ]:
            frames = raw.ask([gp.encode(req)])
            assert frames is not None
            err = gp.decode_reply(frames[0])
            assert isinstance(err, gp.Error) and err.code == code, err
            good(raw)
        # A resync from the current seq at the end: nothing to send.
        frames = raw.ask(
            [
                gp.encode(
                    gp.Snapshot(
                        topic=snap.topic, since_seq=snap.seq, from_offset=snap.end, epoch=snap.epoch
                    )
                )
            ]
        )
        assert frames is not None
        up_to_date = gp.decode_reply(frames[0])
        assert isinstance(up_to_date, gp.Records) and up_to_date.count == 0
    finally:
        raw.close()


def test_req_socket_envelope_and_bad_envelope(gateway: Procs) -> None:
    req = Raw(gateway.requests, zmq.REQ)
    try:
        frames = req.ask([gp.encode(gp.StatusRequest(id=9))])
        assert frames is not None
        status = gp.decode_reply(frames[0])
        assert isinstance(status, gp.Status) and status.id == 9
    finally:
        req.close()
    raw = Raw(gateway.requests)
    try:
        frames = raw.ask([b"", b"", gp.encode(gp.StatusRequest())])
        assert frames is not None
        err = gp.decode_reply(frames[0])
        assert isinstance(err, gp.Error) and err.code == "bad-frames"
        good(raw)
    finally:
        raw.close()


def test_oversize_frame_is_dropped_and_gateway_keeps_serving(gateway: Procs) -> None:
    raw = Raw(gateway.requests)
    try:
        huge = pack({"t": "status", "v": 1, "pad": "x" * (2 * gp.MAX_REQUEST_BYTES)})
        assert raw.ask([huge], timeout_s=1.0) is None  # zmq drops it (and that connection)
    finally:
        raw.close()
    again = Raw(gateway.requests)
    try:
        good(again)
    finally:
        again.close()


def test_history_list_status_and_metrics(gateway: Procs) -> None:
    with GatewayClient(gateway.publish, gateway.requests) as c:
        full = gateway.gateway_records("EUR-USD/BID/1m")
        whole = c.history("EUR-USD", "1m")
        assert whole.tobytes() == full.tobytes()
        t = full["ts_ms"]
        part = c.history("EUR-USD", "1m", start=int(t[10]), end=int(t[20]))
        assert part.tobytes() == full[10:20].tobytes()
        iso = c.history(
            "EUR-USD", "1m", start="2026-01-01T00:05:00", end="2026-01-01T00:07:00+00:00"
        )
        assert list(iso["ts_ms"]) == [int(x) for x in t[5:7]]
        assert len(c.history("EUR-USD", "1m", start=int(t[-1]) + 1)) == 0
        assert c.history("EUR-USD", "1m", last=7).tobytes() == full[-7:].tobytes()
        listing = {x.topic: x for x in c.list_topics()}
        assert set(listing) == set(TOPICS)
        assert listing["EUR-USD/BID/1m"].first_ms == int(t[0])
        assert listing["EUR-USD/BID/1m"].last_ms == int(t[-1])
        assert c.list_topics("GBP-") == []
        status = c.status()
        assert status.topics["EUR-USD/BID/1m"].length == 200
        assert status.topics["EUR-USD/BID/1m"].lag_records == 0
        assert status.consumers >= 1 and status.requests["history"] >= 4
        with pytest.raises(GatewayError) as e:
            c.history("NOPE-USD", "1m")
        assert e.value.code == "unknown-topic" and "NOPE-USD/BID/1m" in str(e.value)
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    assert "barstream_gateway_requests_total" in text
    assert "barstream_gateway_updates_published_total" in text
    assert 'barstream_gateway_request_errors_total{code="unknown-topic"}' in text


def test_history_pages_join_when_over_max_request_records(ipc_dir: Path) -> None:
    with tmpfs_procs(ipc_dir) as p:
        p.config.write_text(
            p.config.read_text().replace("[gateway]\n", "[gateway]\nmax_request_records = 7\n")
        )
        p.start_source(TOPICS[:1], bars=50, ticks=1)
        p.start_gateway()
        p.wait_done()
        with GatewayClient(p.publish, p.requests, timeout_s=2) as c:
            wait_for(
                lambda: c.list_topics() and c.list_topics()[0].count == 50,
                30,
                what="the gateway to serve the 50 bars",
                ignore=(TimeoutError,),
            )
            paged = c.history("EUR-USD", "1m")
            assert paged.tobytes() == p.gateway_records("EUR-USD/BID/1m").tobytes()
            with pytest.raises(GatewayError) as e:
                c.history("EUR-USD", "1m", last=8)
            assert e.value.code == "too-large"
            # A stream's history is bounded the same way; its resyncs are paged.
            items = c.stream(  # a generator
                "EUR-USD", "1m", history=7, timeout_s=5
            )
            first = next(items)
            assert len(first.records) == 7 and np.array_equal(
                first.records["ts_ms"], p.gateway_records("EUR-USD/BID/1m")["ts_ms"][-7:]
            )
            items.close()  # type: ignore[attr-defined]


def test_cli_history_csv_parquet_and_errors(gateway: Procs, tmp_path: Path, capsys) -> None:
    from barstream.services.gateway.cli import history_main

    ends = ["--publish", gateway.publish, "--requests", gateway.requests, "--timeout", "3"]
    out = tmp_path / "bars.csv"
    code = history_main(
        [
            "EUR-USD",
            "1m",
            "--start",
            "2026-01-01T00:10",
            "--end",
            "2026-01-01T00:20",
            "--output",
            str(out),
            *ends,
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    # which gateway answered: instance id, endpoint, and where the endpoint came from
    assert f"at {gateway.requests} (--requests)" in err, err
    assert re.search(r"from gateway [0-9a-f]{16} at ", err), err
    lines = out.read_text().splitlines()
    assert lines[0] == "time,open,high,low,close,volume,provisional"  # the one CSV format
    assert len(lines) == 11 and lines[1].startswith("2026-01-01T00:10:00Z")
    pq = tmp_path / "bars.parquet"
    assert history_main(["EUR-USD", "5m", "--format", "parquet", "--output", str(pq), *ends]) == 0
    import pandas as pd

    assert len(pd.read_parquet(pq)) == 200
    assert history_main(["NOPE-USD", "1m", *ends]) == 2
    assert "unknown-topic" in capsys.readouterr().err
    assert history_main(["EUR-USD", "1m", "--start", "yesterday-ish", *ends]) == 2
    assert history_main(["EUR-USD", "1m", "--format", "parquet", *ends]) == 2
    assert history_main(["--help"]) == 0
    dead = [
        "--publish",
        "ipc:///nonexistent/p",
        "--requests",
        "ipc:///nonexistent/r",
        "--timeout",
        "0.3",
    ]
    assert history_main(["EUR-USD", "1m", *dead]) == 1


def test_history_and_export_write_the_same_csv(
    gateway: Procs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same records through `barstream history` (from the gateway) and `barstream
    export` (from a resampler store holding them) give byte-identical CSV."""
    from barstream import cli
    from barstream.shared.header import StoreMeta
    from barstream.shared.storeset import StoreSet

    records = gateway.gateway_records("EUR-USD/BID/1m")
    ss = StoreSet.open(tmp_path / "resampler", "resampler")
    ss.ensure(StoreMeta("EUR-USD", "BID", "1m", "utc")).append(records)
    ss.touch("EUR-USD/BID/1m")
    ss.commit()
    ss.close()
    ends = ["--publish", gateway.publish, "--requests", gateway.requests, "--timeout", "3"]
    assert cli.main(["history", "EUR-USD", "1m", *ends]) == 0
    history = capsys.readouterr().out
    export = ["export", "EUR-USD", "1m", "--data-dir", str(tmp_path), "--provisional"]
    assert cli.main(export) == 0
    assert capsys.readouterr().out == history
    assert history.count("\n") == len(records) + 1
    assert history.startswith("time,open,high,low,close,volume,provisional\n2026-01-01T00:00:00Z,")


def test_history_and_tail_into_a_closed_pipe_exit_quietly(gateway: Procs) -> None:
    """`barstream history … | head` with the reader gone: exit 0, no traceback."""
    import subprocess
    import sys

    ends = ["--publish", gateway.publish, "--requests", gateway.requests, "--timeout", "5"]
    for args in (["history", "EUR-USD", "1m"], ["tail", "EUR-USD", "1m", "-n", "50"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "barstream", *args, *ends],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # gone before the first byte
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=60)
        assert code == 0, (args[0], code, err)
        assert "Traceback" not in err and "Exception ignored" not in err, err


def test_cli_tail_prints_history_then_stops(gateway: Procs, capsys) -> None:
    import argparse
    import io

    from barstream.services.gateway import cli

    parser = argparse.ArgumentParser()
    cli.add_tail_parser(parser.add_subparsers())
    ends = ["--publish", gateway.publish, "--requests", gateway.requests]
    args = parser.parse_args(["tail", "EUR-USD", "1m", "-n", "3", *ends])
    lines: list[str] = []

    class Out(io.StringIO):
        """Stands for a terminal; the user presses ^C after three bars."""

        def write(self, s: str) -> int:
            lines.append(s)
            if len(lines) >= 3:
                raise KeyboardInterrupt
            return len(s)

    assert cli.run_tail(args, Out()) == cli.EXIT_INTERRUPTED
    assert len(lines) == 3 and lines[-1].split()[0] == "199"
    assert cli.tail_main(["EUR-USD", "1m", "-n", "-1"]) == cli.EXIT_USAGE
    assert cli.tail_main(["--help"]) == 0
    assert "Provisional" in capsys.readouterr().out
