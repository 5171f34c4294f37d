"""Names off a socket are checked against the configuration before they touch a path, a
store or a metric label (shared/names.py): the exact batches of issue 16 sent to real
running services, which stay up, count each rejection and create no file."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import zmq

from barstream.shared.errors import StoreError
from barstream.shared.names import MAX_PART, RejectedName, StreamNames, key_problem
from barstream.shared.storeset import StoreSet
from tests.hostile.support import FakeUpstream, bars, config, spawn, write
from tests.support.ops import SCRAPE_ERRORS, sample, scrape
from tests.support.wait import wait_for

#: stream → the reason it is refused, for a stage that takes configured EUR-USD/BID/<kind>.
HOSTILE = {
    "EURUSD": "bad-key",  # issue 16: ValueError at unpack, the resampler died
    "../../1m": "bad-key",  # issue 16: a file outside the data dir, then a crash loop
    "EUR-USD/../../{kind}": "bad-key",
    "EUR-USD/BID/{kind}/x": "bad-key",
    "EUR-USD//{kind}": "bad-key",
    "EUR-USD/BID\x00/{kind}": "bad-key",
    "EUR-USD/BID\n2026 FAKE LOG LINE/{kind}": "bad-key",
    "/etc/{kind}": "bad-key",
    "X" * 5000 + "/BID/{kind}": "bad-key",
    "GBP-USD/BID/{kind}": "unknown-symbol",
    "EUR-USD/ASK/{kind}": "unknown-side",
    "EUR-USD/BID/7m": "unknown-timeframe",
}


def test_key_shapes() -> None:
    assert key_problem("EUR-USD/BID/1m") is None
    assert key_problem("DEU.IDX-EUR/ASK/fetch") is None
    for bad in ("EURUSD", "../../1m", "a//b", "a/b/c/d", "a/b/.x", "a/b/c\x00", "a/ b/c", ""):
        assert key_problem(bad) is not None, bad
    assert key_problem("A" * MAX_PART + "/BID/1m") is None
    assert "characters" in str(key_problem("A" * (MAX_PART + 1) + "/BID/1m"))


def test_stream_names_check_the_configuration() -> None:
    names = StreamNames(["EUR-USD"], ["BID"], ["1m", "5m"])
    assert names.check("EUR-USD/BID/5m").timeframe == "5m"
    for key, reason in HOSTILE.items():
        with pytest.raises(RejectedName) as e:
            names.check(key.format(kind="1m"))
        assert e.value.reason == reason, key
        assert "\n" not in str(e.value) and "\x00" not in str(e.value)
        assert len(str(e.value)) < 400
    assert StreamNames(["EUR-USD"], ["BID"], None).problem("EUR-USD/BID/any") is None


def test_storeset_never_leaves_its_root(tmp_path: Path) -> None:
    stores = StoreSet.open(tmp_path / "svc", "svc")
    try:
        for key in ("../../1m", "EURUSD", "a/../b", "a/b/c\x00"):
            with pytest.raises(StoreError, match="store key"):
                stores.path_for(key)
        assert stores.path_for("EUR-USD/BID/1m") == tmp_path / "svc/EUR-USD/BID/1m.bars"
    finally:
        stores.close()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["svc"]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() and "log" not in p.name}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("service", "kind"), [("resampler", "1m"), ("aggregator", "days"), ("gateway", "1m")]
)
def test_hostile_stream_names_to_a_running_service(service: str, kind: str, ipc_dir: Path) -> None:
    """A process that took the upstream's feed address sends a real ``service`` batches
    named anything: each is dropped and counted by reason, the service stays up, no
    file appears but its own good store, and it restarts cleanly afterwards."""
    data = config(ipc_dir, upstream=service)
    cfg = write(ipc_dir / "c.toml", data)
    port = data[service]["endpoints"]["metrics_port"]
    log = ipc_dir / f"{service}.log"
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    fake = FakeUpstream(ctx, f"ipc://{ipc_dir}/fake.feed")
    proc = spawn(service, cfg, log)
    try:
        fake.hello(20)
        wait_for(lambda: scrape(port), 20, what="metrics", ignore=SCRAPE_ERRORS)
        before = _files(ipc_dir)
        # The good stream first (its store exists before the attack), then every hostile one.
        src = 0 if kind == "days" else None
        fake.batch(f"EUR-USD/BID/{kind}", 0, bars(3, src=src))
        for stream in HOSTILE:
            fake.batch(stream.format(kind=kind), 0, bars(3, src=src))
        fake.heartbeat({s.format(kind=kind): (3, 0) for s in HOSTILE})

        def rejected() -> dict[str, float]:
            s = scrape(port)
            got = {
                r: sample(s, "barstream_rejected_messages_total", reason=r) or 0
                for r in set(HOSTILE.values())
            }
            return got if sum(got.values()) >= len(HOSTILE) else {}

        got = wait_for(rejected, 20, what="rejections counted", ignore=SCRAPE_ERRORS)
        want = {r: float(list(HOSTILE.values()).count(r)) for r in set(HOSTILE.values())}
        assert got == want
        s = scrape(port)
        length = sample(
            s, "barstream_committed_length_records", symbol="EUR-USD", side="BID", timeframe="1m"
        )
        assert length == 3  # the good batch went through
        labels = {lbl.get("symbol", "") for _, samples in s.items() for lbl, _v in samples}
        assert not any("X" * 100 in x or "/" in x or "\x00" in x for x in labels), labels
        assert proc.poll() is None, log.read_text()
        fake.drain()
        after = _files(ipc_dir)
        new = {p.relative_to(ipc_dir) for p in after - before}
        root = Path(data["pipeline"]["data_dir"]).relative_to(ipc_dir) / service
        assert all(p.is_relative_to(root / "EUR-USD" / "BID") or p.parent == root for p in new), new
        text = log.read_text()
        assert "Traceback" not in text, text
        assert "FAKE LOG LINE" not in text.replace("\\n2026 FAKE LOG LINE", "")
        # No crash loop: it stops cleanly and starts again on the same data.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log.read_text()
        proc = spawn(service, cfg, log)
        fake.hello(20)
        assert proc.poll() is None, log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except Exception:
                proc.kill()
                proc.wait()
        fake.close()
        ctx.destroy(linger=0)
