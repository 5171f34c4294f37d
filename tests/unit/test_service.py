"""The Service shell: SIGTERM closes gracefully with a commit (real subprocess), exit
codes, ``__repr__`` counters."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from barstream.shared import config, errors
from barstream.shared.storeset import StoreSet
from tests.conftest import REPO
from tests.support.demo_service import Demo


def write_config(tmp_path: Path, ipc_dir: Path) -> Path:
    path = tmp_path / "barstream.toml"
    path.write_text(
        f'[pipeline]\ndata_dir = "{tmp_path / "data"}"\ncommit_interval_s = 10.0\n'
        f'[aggregator.endpoints]\nfeed = "ipc://{ipc_dir}/agg"\nmetrics_port = 0\n'
    )
    return path


def spawn(mode: str, cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.demo_service", mode, "--config", str(cfg)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_closes_gracefully_and_commits(tmp_path: Path, ipc_dir: Path) -> None:
    cfg = write_config(tmp_path, ipc_dir)
    proc = spawn("run", cfg)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == errors.EXIT_OK, err
    # commit_interval_s is 10 s: only the close() commit can have made these durable.
    m = re.search(r"stopped: <Demo in=0 out=\d+ records=(\d+) stores=1>", err)
    assert m, err
    records = int(m.group(1))
    assert records > 0 and records % 7 == 0
    stores = StoreSet.open(tmp_path / "data" / "aggregator", "aggregator")
    try:
        assert stores.stores["EUR-USD/BID/1m"].length == records
    finally:
        stores.close()


def test_exit_codes(tmp_path: Path, ipc_dir: Path) -> None:
    cfg = write_config(tmp_path, ipc_dir)
    for mode, code, text in [
        (
            "fail-barstream",
            errors.EXIT_ERROR,
            "stopped on error: demo.bars: record 3: demo failure",
        ),
        ("fail-os", errors.EXIT_ERROR, "stopped on I/O error: [Errno 28] No space left on device"),
        (
            "fail-store",
            errors.EXIT_NEEDS_OPERATOR,
            "FATAL: aggregator needs an operator, it will not be restarted: demo.bars: record 3: "
            "demo damage",
        ),
    ]:
        proc = spawn(mode, cfg)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == code, err
        assert text in err
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline]\nsymbols = ['eurusd']\n")
    proc = spawn("run", bad)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == errors.EXIT_USAGE
    assert "cannot start: " in err and "pipeline.symbols[0] = 'eurusd'" in err


def test_repr_shows_counters(tmp_path: Path, ipc_dir: Path) -> None:
    cfg = config.load(write_config(tmp_path, ipc_dir))
    demo = Demo(cfg, serve_metrics=False)
    try:
        assert repr(demo) == "<Demo in=0 out=0 records=0 stores=0>"
        from barstream.shared.header import StoreMeta
        from tests.support.plan import make_records

        s = demo.stores.ensure(StoreMeta("EUR-USD", "BID", "1m"))
        s.append(make_records(1, 1, 0, 0, 5))
        demo.commit()
        assert repr(demo) == "<Demo in=0 out=0 records=5 stores=1>"
        assert demo.metrics.committed_length.labels("EUR-USD", "BID", "1m")._value.get() == 5
        assert demo.maybe_commit() is False  # nothing pending
    finally:
        import asyncio

        asyncio.run(demo.close())
