"""A clean stop (SIGTERM) hands the last commit to connected downstream peers before the
process exits: after stopping the downloader in the middle of live polling, the transformer
holds exactly what the downloader committed last (offset and generation)."""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path

import pytest

from tests.support.pipeline import caught_up, pipeline, wait_caught_up


@pytest.mark.timeout(120)
def test_sigterm_flushes_the_last_commit_downstream(tmp_path: Path, ipc_dir: Path) -> None:
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID"],
        start_date=dt.date(2026, 1, 12),
        end_date=None,
    ) as p:
        p.write_config(live_poll_interval_s=0.05, refetch_days=0)
        p.start_fake("--start", "2026-01-14T12:00:00", "--speed", "600")
        p.start("downloader")
        p.start("transformer")
        wait_caught_up(p, [("transformer", "downloader")], 60)  # history in
        time.sleep(1.0)  # live polls rewrite the journal's tail many times a second
        p.kill("downloader", signal.SIGTERM)
        assert p.procs["downloader"].returncode == 0, p.log_tail("downloader")
        deadline = time.monotonic() + 3  # no reconnect: what arrived before the exit is all
        while not caught_up(p, "transformer", "downloader"):
            assert time.monotonic() < deadline, (
                "the downloader's last commit did not reach the transformer"
            )
            time.sleep(0.02)
        p.kill("transformer", signal.SIGTERM)
        assert p.procs["transformer"].returncode == 0, p.log_tail("transformer")
