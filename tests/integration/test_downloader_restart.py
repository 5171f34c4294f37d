"""A downloader restarted next to an upstream whose clock is behind the local one (the fake
upstream's simulated clock; any upstream across a midnight skew) must not take days the
upstream has not finished for final: no gap, no day after the upstream's today, the live
day stays the journal's tail. Found by the chaos test (tests/integration/test_chaos.py)."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import numpy as np
import pytest

from barstream.shared.record import JOURNAL_DAY, JOURNAL_GAP, JOURNAL_LIVE
from barstream.shared.timeframe import DAY_MS
from tests.support.pipeline import Pipeline, pipeline
from tests.support.wait import wait_for

START = dt.date(2026, 1, 12)
TODAY = dt.date(2026, 1, 14)  # the upstream's today: far behind this machine's clock


def _journal(p: Pipeline) -> np.ndarray:
    try:
        return p.store_records("downloader", "EUR-USD/BID/fetch")
    except Exception:  # not created / committed yet
        return np.zeros(0)


def _wait_live(p: Pipeline, timeout_s: float) -> np.ndarray:
    """The journal, once its tail is a live day."""
    journal: np.ndarray = np.zeros(0)

    def live() -> bool:
        nonlocal journal
        journal = _journal(p)
        return bool(len(journal)) and int(journal["kind"][-1]) == JOURNAL_LIVE

    wait_for(
        live,
        timeout_s,
        what="a live day in the journal",
        on_timeout=lambda: p.log_tail("downloader"),
    )
    return journal


def _served(p: Pipeline) -> int:
    """Requests the fake upstream has answered, its control plane aside."""
    stats = p.stats()
    total, by_route = stats["requests_total"], stats["by_route"]
    assert isinstance(total, int) and isinstance(by_route, dict)
    return total - int(by_route.get("control", 0))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_restart_takes_the_upstreams_today_not_the_local_clock(
    tmp_path: Path, ipc_dir: Path, sig: int
) -> None:
    with pipeline(
        tmp_path, ipc_dir, symbols=["EUR-USD"], sides=["BID"], start_date=START, end_date=None
    ) as p:
        p.write_config(live_poll_interval_s=0.1, refetch_days=0)
        p.start_fake("--start", f"{TODAY.isoformat()}T12:00:00", "--speed", "0")
        p.start("downloader")
        before = _wait_live(p, 60)
        p.kill("downloader", sig)
        served = _served(p)
        p.start("downloader")  # resumes after the last final day: the upstream's today
        wait_for(  # a dozen live polls and the next backfill decisions
            lambda: _served(p) >= served + 12,
            30,
            what="a dozen requests of the restarted downloader",
            on_timeout=lambda: p.log_tail("downloader"),
        )
        _wait_live(p, 30)
        p.kill("downloader", signal.SIGTERM)
        journal = _journal(p)
        days = (journal["ts_ms"] // DAY_MS).tolist()
        today = (TODAY - dt.date(1970, 1, 1)).days
        log = p.log_tail("downloader")
        assert not (journal["kind"] == JOURNAL_GAP).any(), f"gaps after the restart:\n{log}"
        assert max(days) == today, f"days after the upstream's today {TODAY}: {days}\n{log}"
        assert int(journal["kind"][-1]) == JOURNAL_LIVE and days[-1] == today, log
        finals = journal["ts_ms"][journal["kind"] == JOURNAL_DAY] // DAY_MS
        assert finals.tolist() == list(range(today - 2, today)), finals
        assert journal.tobytes() == before.tobytes(), "the frozen upstream's journal changed"


def test_a_404_carries_the_upstreams_clock() -> None:
    """The 404 of a day that is not over upstream says when the upstream thinks it is."""
    import asyncio
    import random

    from barstream.fake.clock import SimClock
    from barstream.fake.upstream import FakeUpstream
    from barstream.services.downloader.source import (
        HttpSource,
        RequestBudget,
        RetryPolicy,
        SourceSettings,
        day_start_ms,
    )
    from barstream.shared.errors import NotFound

    sim_ms = day_start_ms(TODAY) + 12 * 3_600_000
    with FakeUpstream(clock=SimClock(sim_ms, speed=0.0), seed=1, real_dir=None) as up:
        src = HttpSource(
            SourceSettings(base_url=up.url, timeout_s=5.0, retry=RetryPolicy(max_attempts=1)),
            RequestBudget(100.0, 10),
            rng=random.Random(1),
        )
        with pytest.raises(NotFound) as err:
            asyncio.run(asyncio.wait_for(src.fetch_day("EUR-USD", "BID", TODAY), 10))
    assert err.value.server_ms is not None
    assert abs(err.value.server_ms - sim_ms) <= 1000  # HTTP dates have 1 s resolution
