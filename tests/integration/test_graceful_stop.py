"""A clean stop (SIGTERM) hands the last commit to connected downstream peers before the
process exits: after stopping the downloader in the middle of live polling, the transformer
holds exactly what the downloader committed last (offset and generation)."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest

from barstream.shared.checkpoint import Checkpoint
from tests.support.pipeline import Pipeline, caught_up, pipeline, wait_caught_up
from tests.support.wait import wait_for


def _rewrites(p: Pipeline) -> int:
    """Commits of the downloader that rewrote committed records (its live day's tail)."""
    state = Checkpoint(p.root / "data" / "downloader" / "checkpoint.json").load()
    return 0 if state is None else sum(mark.generation for mark in state.stores.values())


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
        before = _rewrites(p)
        wait_for(  # live polls rewrite the journal's tail many times a second
            lambda: _rewrites(p) >= before + 5,
            30,
            what="live polls to rewrite the journal's tail",
            on_timeout=lambda: p.log_tail("downloader"),
        )
        p.kill("downloader", signal.SIGTERM)
        assert p.procs["downloader"].returncode == 0, p.log_tail("downloader")
        wait_for(  # no reconnect: what arrived before the exit is all
            lambda: caught_up(p, "transformer", "downloader"),
            3,
            what="the downloader's last commit to reach the transformer",
            every_s=0.02,
        )
        p.kill("transformer", signal.SIGTERM)
        assert p.procs["transformer"].returncode == 0, p.log_tail("transformer")
