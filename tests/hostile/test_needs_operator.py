"""The "needs an operator" exit under the REAL supervisord.conf: a service whose own files
are damaged prints one FATAL line naming the file, the offset and the repair commands, exits
``EXIT_NEEDS_OPERATOR`` (3), and supervisord does not restart it in a loop — found at start,
it is retried ``startretries`` times and ends FATAL; found while running (a store file
deleted under the service), the exit is expected and the program stays EXITED. The restart
counts are read back from supervisord's own log, and the other services keep running."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barstream.shared.errors import EXIT_NEEDS_OPERATOR
from barstream.supervise import Supervisor, default_conf, program
from tests.support.ops import SCRAPE_ERRORS, free_port, pipeline_config, sample, scrape
from tests.support.ops import write_config as write_toml
from tests.support.wait import wait_for

SERVICES = ("downloader", "transformer", "aggregator", "resampler", "gateway")


def conf_value(name: str, key: str) -> str:
    cp = configparser.RawConfigParser()
    cp.read(default_conf())
    return cp.get(f"program:{name}", key)


def spawns(sup: Supervisor, name: str) -> int:
    """How many times supervisord started ``name`` (its log's ``spawned:`` lines)."""
    text = (sup.log_dir / "supervisord.log").read_text()
    return len(re.findall(rf"spawned: '{name}' with pid", text))


def state(sup: Supervisor, name: str) -> dict[str, Any]:
    return sup.processes()[program(name)]


@pytest.fixture
def run_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bs-op-", dir="/tmp") as d:
        yield Path(d)


def test_supervisord_conf_expects_the_needs_operator_exit() -> None:
    for name in SERVICES:
        codes = {int(c) for c in conf_value(name, "exitcodes").split(",")}
        assert EXIT_NEEDS_OPERATOR in codes and 0 in codes, name
        assert conf_value(name, "autorestart") == "unexpected", name
        assert 0 < int(conf_value(name, "startretries")) <= 5, name


def test_service_exits_3_with_one_fatal_line(run_dir: Path) -> None:
    """Without supervisord: the process's exit code and its whole output."""
    data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
    config = write_toml(run_dir / "pipeline.toml", data)
    ck = run_dir / "data" / "aggregator" / "checkpoint.json"
    ck.parent.mkdir(parents=True)
    torn = b'{"service": "aggregator", "commits": 1, "wall_ms": 0, "stores": {'
    ck.write_bytes(torn)
    done = subprocess.run(
        [sys.executable, "-m", "barstream.services.aggregator", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_NEEDS_OPERATOR, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert "CRITICAL" in line and "FATAL: aggregator needs an operator" in line
    assert str(ck) in line and f"at byte {len(torn)}, the end of the file" in line
    assert f"`barstream rebuild --config {config}`" in line
    assert f"`barstream verify --config {config}`" in line
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_damage_found_at_start_ends_fatal_or_exited_not_a_loop(run_dir: Path) -> None:
    data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
    config = write_toml(run_dir / "pipeline.toml", data)
    # The resampler's checkpoint names a store whose header is damaged.
    root = run_dir / "data" / "resampler"
    from barstream.shared.header import StoreMeta
    from barstream.shared.storeset import StoreSet

    stores = StoreSet.open(root, "resampler")
    stores.create(StoreMeta("EUR-USD", "BID", "5m", "utc"))
    stores.commit()
    stores.close()
    bars = root / "EUR-USD" / "BID" / "5m.bars"
    raw = bytearray(bars.read_bytes())
    raw[40] ^= 0xFF  # inside the store id: the header's checksum no longer matches
    bars.write_bytes(bytes(raw))

    sup = Supervisor(config, run_dir / "var", demo=False, events_port=free_port())
    proc = sup.start(foreground=True)
    try:
        retries = int(conf_value("resampler", "startretries"))
        # Exit 3 within startsecs is a failed start: retried, then FATAL. On a loaded
        # machine the start itself can outlast startsecs: then the exit is an expected one,
        # EXITED at once. Either way it ends, with a bounded number of starts.
        wait_for(
            lambda: state(sup, "resampler")["statename"] in ("FATAL", "EXITED"),
            90,
            what="the resampler FATAL (after its start retries) or EXITED (expected)",
        )
        final = state(sup, "resampler")
        starts = spawns(sup, "resampler")
        if final["statename"] == "EXITED":
            assert final["exitstatus"] == EXIT_NEEDS_OPERATOR and starts == 1, (final, starts)
        else:
            assert starts == 1 + retries, starts
        # Still so a while later: nothing restarts it.
        wait_for(lambda: state(sup, "aggregator")["statename"] == "RUNNING", 30, what="agg")
        assert state(sup, "resampler")["statename"] == final["statename"]
        assert spawns(sup, "resampler") == starts
        log = (sup.log_dir / "resampler.log").read_text()
        fatal = [ln for ln in log.splitlines() if "FATAL: resampler needs an operator" in ln]
        assert len(fatal) == starts, log  # one line per start, nothing else
        assert len(log.strip().splitlines()) == starts, log
        assert str(bars) in fatal[0] and "header bytes [0, 168)" in fatal[0]
        assert "barstream rebuild --config" in fatal[0] and "Traceback" not in log
        for name in ("downloader", "transformer", "aggregator", "gateway"):
            assert state(sup, name)["statename"] == "RUNNING", name
            assert spawns(sup, name) == 1, name
    finally:
        sup.shutdown(proc)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_store_deleted_while_running_exits_expected_and_stays_exited(run_dir: Path) -> None:
    data = pipeline_config(run_dir, run_dir / "data", fake_port=free_port())
    config = write_toml(run_dir / "pipeline.toml", data)
    sup = Supervisor(config, run_dir / "var", demo=True, events_port=free_port())
    proc = sup.start(foreground=True)
    try:
        port = data["aggregator"]["endpoints"]["metrics_port"]

        def committed() -> float | None:
            return sample(
                scrape(port),
                "barstream_committed_length_records",
                symbol="EUR-USD",
                side="BID",
                timeframe="1m",
            )

        wait_for(lambda: (committed() or 0) > 0, 90, what="1m bars", ignore=SCRAPE_ERRORS)
        store = run_dir / "data" / "aggregator" / "EUR-USD" / "BID" / "1m.bars"
        store.unlink()  # the live minute keeps changing: the next commit finds it gone
        wait_for(lambda: state(sup, "aggregator")["statename"] == "EXITED", 60, what="agg EXITED")
        info = state(sup, "aggregator")
        assert info["exitstatus"] == EXIT_NEEDS_OPERATOR
        text = (sup.log_dir / "supervisord.log").read_text()
        assert "exited: aggregator (exit status 3; expected)" in text
        log = (sup.log_dir / "aggregator.log").read_text()
        fatal = [ln for ln in log.splitlines() if "FATAL: aggregator needs an operator" in ln]
        assert len(fatal) == 1 and str(store) in fatal[0] and "deleted" in fatal[0], log
        assert "Traceback" not in log
        # Not restarted: still EXITED after more than startsecs + the back-off delays.
        wait_for(lambda: state(sup, "resampler")["statename"] == "RUNNING", 10, what="res")
        import time

        time.sleep(6)
        assert state(sup, "aggregator")["statename"] == "EXITED"
        assert spawns(sup, "aggregator") == 1
    finally:
        sup.shutdown(proc)
