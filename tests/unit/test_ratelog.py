"""shared/ratelog.py: the first event per peer in full, then one summary per interval."""

from __future__ import annotations

import logging

import pytest

from barstream.shared.ratelog import RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def rl(caplog: pytest.LogCaptureFixture) -> tuple[RateLimitedLog, Clock]:
    clock = Clock()
    caplog.set_level(logging.WARNING, logger="t.ratelog")
    return RateLimitedLog(logging.getLogger("t.ratelog"), "malformed messages", clock=clock), clock


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_first_in_full_then_one_summary_per_interval(
    rl: tuple[RateLimitedLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = rl
    for i in range(4813):
        log.event("ep", "peerA", f"why {i}", f"ep: dropped from peerA: why {i}")
    assert lines(caplog) == ["ep: dropped from peerA: why 0"]
    clock.t += 10.0
    log.event("ep", "peerA", "why last", "full")
    assert lines(caplog)[1] == (
        "ep: peer peerA: 4,813 more malformed messages in the last 10 s (last: why last)"
    )
    assert log.events == 4814 and log.lines == 2
    # quiet for a whole interval: the next event is logged in full again
    clock.t += 11.0
    log.event("ep", "peerA", "x", "full again")
    assert lines(caplog)[-1] == "full again"


def test_peers_are_independent_and_flush_writes_pending_summaries(
    rl: tuple[RateLimitedLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = rl
    for _ in range(3):
        log.event("ep", "A", "a", "first A")
        log.event("ep", "B", "b", "first B")
    assert lines(caplog) == ["first A", "first B"]
    log.flush()  # not yet: the interval has not passed
    assert len(lines(caplog)) == 2
    clock.t += 10.0
    log.flush()
    assert sorted(lines(caplog)[2:]) == [
        "ep: peer A: 2 more malformed messages in the last 10 s (last: a)",
        "ep: peer B: 2 more malformed messages in the last 10 s (last: b)",
    ]
    log.flush()
    assert len(lines(caplog)) == 4


def test_a_flood_of_new_peers_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    caplog.set_level(logging.WARNING, logger="t.ratelog")
    log = RateLimitedLog(logging.getLogger("t.ratelog"), "m", clock=clock, max_peers=8)
    for i in range(10_000):
        log.event("ep", f"p{i % 8}", "w", f"first p{i % 8}")
    assert log.lines == 8
    # 1,000 fresh identities (a connect flood): the first MAX_NEW in full, the rest
    # summarised together as "(new peers)"; tracking stays bounded
    clock.t += 10.0
    before = log.lines
    for i in range(1000):
        log.event("ep", f"fresh{i}", "w", f"first fresh{i}")
    # + the "(new peers)" line + the summaries of the 8 old peers, evicted with counts
    assert log.lines - before == log.max_new + 1 + 8
    assert "peer p0: 1,249 more m in the last 10 s (last: w)" in "\n".join(lines(caplog))
    assert len(log._peers) == 8
    clock.t += 10.0
    log.flush()
    summary = lines(caplog)[-1]
    assert summary.startswith("ep: peer (new peers): 979 more m in the last 10 s"), summary
    assert summary.endswith("(last: fresh999: w)")
    assert log.events == 11_000
