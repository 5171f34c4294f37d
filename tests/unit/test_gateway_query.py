"""The gateway's pure core: request resolution, the seq log, helpers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from barstream.services.gateway import query
from barstream.services.gateway.query import SeqLog, Span
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import GatewayError
from barstream.shared.record import FLAG_PROVISIONAL, empty

TIMES = np.arange(10, dtype=np.int64) * 60_000  # bars at 0, 1, ... 9 minutes


@pytest.mark.parametrize(
    ("req", "span"),
    [
        (gp.History(topic="t"), Span(0, 10)),
        (gp.History(topic="t", start_ms=60_000, end_ms=180_000), Span(1, 3)),
        (gp.History(topic="t", start_ms=59_999), Span(1, 10)),
        (gp.History(topic="t", end_ms=0), Span(0, 0)),
        (gp.History(topic="t", start_ms=10**12), Span(10, 10)),
        (gp.History(topic="t", last=3), Span(7, 10)),
        (gp.History(topic="t", last=0), Span(10, 10)),
        (gp.History(topic="t", last=500), Span(0, 10)),
        (gp.History(topic="t", start_ms=5, end_ms=5), Span(1, 1)),
    ],
)
def test_resolve_history(req: gp.History, span: Span) -> None:
    assert query.resolve_history(req, TIMES, 1000) == span


def test_resolve_history_pages_and_refusals() -> None:
    assert query.resolve_history(gp.History(topic="t"), TIMES, 4) == Span(0, 4, more=True)
    for req, code in [
        (gp.History(topic="t", last=5), "too-large"),
        (gp.History(topic="t", last=-1), "bad-range"),
        (gp.History(topic="t", start_ms=9, end_ms=8), "bad-range"),
        (gp.History(topic="t", last=1, end_ms=8), "invalid-field"),
    ]:
        with pytest.raises(GatewayError) as e:
            query.resolve_history(req, TIMES, 4)
        assert e.value.code == code


def test_resolve_snapshot_fresh_and_resync() -> None:
    log = SeqLog()
    log.record(0, 0)  # seq 1: growth 0..10
    log.record(9, 10)  # seq 2: provisional bar 9 rewritten
    log.record(10, 10)  # seq 3: growth
    snap = gp.Snapshot(topic="t", last=4)
    assert query.resolve_snapshot(snap, 11, "E", log, 100) == Span(7, 11)

    def resync(since: int, have: int) -> Span:
        req = gp.Snapshot(topic="t", since_seq=since, from_offset=have, epoch="E")
        return query.resolve_snapshot(req, 11, "E", log, 100)

    assert resync(3, 11) == Span(11, 11)  # up to date
    assert resync(2, 10) == Span(10, 11)  # missed growth only
    assert resync(1, 10) == Span(9, 11)  # missed the rewrite of bar 9
    assert resync(1, 5) == Span(5, 11)  # holds less than the rewrite point
    req = gp.Snapshot(topic="t", since_seq=0, from_offset=0, epoch="E")
    assert query.resolve_snapshot(req, 11, "E", log, 4) == Span(0, 4, more=True)
    for bad, code in [
        (gp.Snapshot(topic="t", since_seq=1, from_offset=1, epoch="X"), "stale-epoch"),
        (gp.Snapshot(topic="t", since_seq=4, from_offset=1, epoch="E"), "bad-range"),
        (gp.Snapshot(topic="t", since_seq=1, from_offset=-1, epoch="E"), "invalid-field"),
        (gp.Snapshot(topic="t", last=101), "too-large"),
    ]:
        with pytest.raises(GatewayError) as e:
            query.resolve_snapshot(bad, 11, "E", log, 100)
        assert e.value.code == code


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=300), st.data())
def test_seqlog_never_above_the_truth_and_exact_when_recent(moves, data) -> None:
    """changed_since is <= the true lowest start after S; exact while S is remembered."""
    log = SeqLog()
    starts = []
    for start, prev in moves:
        log.record(start, prev)
        starts.append((start, prev))
    for restored in (log, SeqLog.from_json(log.to_json())):
        s = data.draw(st.integers(0, len(starts)))
        truth = [a for a, p in starts[s:] if a < p]
        got = restored.changed_since(s)
        if truth:
            assert got is not None and got <= min(truth)
        if restored is log and s >= log.floor_seq:
            assert got == (min(truth) if truth else None)


def test_seqlog_folds_old_entries_into_a_floor() -> None:
    log = SeqLog()
    for i in range(query.SEQLOG_MEMORY + 10):
        log.record(i, i + 1)  # every message rewinds by one
    assert len(log.rewinds) <= query.SEQLOG_MEMORY
    assert log.floor_seq > 0 and log.floor_low == 0
    assert log.changed_since(log.seq - 1) == log.seq - 1  # recent: exact
    assert log.changed_since(0) == 0  # old: conservative floor
    saved = SeqLog.from_json(log.to_json())
    assert saved.seq == log.seq and len(saved.rewinds) == query.SEQLOG_PERSIST
    assert saved.changed_since(log.seq - 1) == log.seq - 1
    for bad in ([], [1, 2], "x", [1, 2, -5], [1, 0, -1, 3]):
        with pytest.raises(ValueError):
            SeqLog.from_json(bad)


def test_split_first_difference_closed_end() -> None:
    assert query.split(5, 5, 3) == [(5, 5)]
    assert query.split(0, 7, 3) == [(0, 3), (3, 6), (6, 7)]
    a = empty(5)
    a["ts_ms"] = np.arange(5)
    b = a.copy()
    assert query.first_difference(a, b) == 5
    assert query.first_difference(a, b[:3]) == 3
    b["flags"][3] = FLAG_PROVISIONAL
    assert query.first_difference(a, b) == 3
    assert query.closed_end(b, 100) == 103
    assert query.closed_end(a, 100) == 105
    assert query.first_difference(empty(0), a) == 0
