"""The client's pure follower: what a consumer receives for each message (no sockets)."""

from __future__ import annotations

import numpy as np
import pytest

from barstream.services.gateway.client import to_pandas, to_polars
from barstream.services.gateway.follower import Follower
from barstream.services.gateway.frames import ms
from barstream.shared import gateway_protocol as gp
from barstream.shared.record import FLAG_PROVISIONAL, empty

E = "epoch"


def bars(lo: int, hi: int, *, provisional_last: bool = False, close: float = 1.0) -> np.ndarray:
    r = empty(hi - lo)
    r["ts_ms"] = np.arange(lo, hi) * 60_000
    r["close"] = close
    if provisional_last and len(r):
        r["flags"][-1] = FLAG_PROVISIONAL
    return r


def reply(seq: int, start: int, records: np.ndarray, more: bool = False) -> gp.Records:
    n = len(records)
    return gp.Records(
        id=1, topic="T", epoch=E, seq=seq, start=start, count=n, end=start + n, more=more
    )


def update(seq: int, start: int, records: np.ndarray, end: int | None = None) -> gp.Update:
    n = len(records)
    return gp.Update(
        epoch=E, seq=seq, start=start, count=n, end=start + n if end is None else end, closed_end=0
    )


def live(history: int = 3, closed_only: bool = False) -> Follower:
    f = Follower("T", history, closed_only)
    assert f.request(1) == gp.Snapshot(topic="T", last=history, id=1)
    series = bars(0, 10, provisional_last=True)
    (item,) = f.on_reply(reply(5, 7, series[7:]), series[7:])
    assert item.kind == "history" and item.start_offset == 7 and item.replaces == 0
    return f


def test_provisional_update_new_bar_and_repeat() -> None:
    f = live()
    (item,) = f.on_update(
        update(6, 9, bars(9, 10, provisional_last=True, close=2.0)),
        bars(9, 10, provisional_last=True, close=2.0),
    )
    assert (item.start_offset, item.replaces, item.provisional.tolist()) == (9, 1, [True])
    closing = np.concatenate([bars(9, 10, close=2.0), bars(10, 11, provisional_last=True)])
    (item,) = f.on_update(update(7, 9, closing), closing)
    assert (
        item.start_offset == 9 and item.replaces == 1 and item.provisional.tolist() == [False, True]
    )
    assert f.on_update(update(8, 9, closing), closing) == []  # changes nothing: no item
    assert f.on_update(update(8, 9, closing), closing) == []  # an old seq: dropped


def test_gap_then_resync_applies_only_what_changed_and_buffered_after() -> None:
    f = live()
    assert f.on_update(update(7, 10, bars(10, 11)), bars(10, 11)) == []  # seq 6 missing
    assert f.state == "init"
    req = f.request(2)
    assert (req.since_seq, req.from_offset, req.epoch) == (5, 10, E)
    f.on_update(update(8, 11, bars(11, 12)), bars(11, 12))  # arrives while fetching: buffered
    fixed = bars(9, 11)  # bar 9 closed, bar 10 new
    items = f.on_reply(reply(7, 9, fixed), fixed)
    assert [(i.kind, i.start_offset, len(i.records), i.replaces) for i in items] == [
        ("resync", 9, 2, 1),
        ("update", 11, 1, 0),
    ]
    assert f.seq == 8 and f.series.end == 12


def test_chunked_update_and_paged_resync_are_joined() -> None:
    f = live()
    new = bars(9, 15)
    assert f.on_update(update(6, 9, new[:3], end=15), new[:3]) == []
    (item,) = f.on_update(update(7, 12, new[3:], end=15), new[3:])
    assert (item.start_offset, len(item.records)) == (9, 6) and f.seq == 7
    f.state = "init"
    f.request(3)
    assert f.on_reply(reply(9, 14, bars(14, 16), more=True), bars(14, 16)) == []
    assert f.request(4).since_seq == 9 and f.request(4).from_offset == 16
    (item,) = f.on_reply(reply(10, 16, bars(16, 17)), bars(16, 17))
    # bar 14 came back unchanged: the consumer gets only what is new
    assert (item.start_offset, len(item.records), item.replaces) == (15, 2, 0) and f.seq == 10


def test_closed_only_yields_each_closed_bar_once_and_revisions_flagged() -> None:
    f = live(history=3, closed_only=True)
    assert f.yielded_closed == 9
    assert (
        f.on_update(
            update(6, 9, bars(9, 10, provisional_last=True, close=3.0)),
            bars(9, 10, provisional_last=True, close=3.0),
        )
        == []
    )
    closing = np.concatenate([bars(9, 10, close=3.0), bars(10, 11, provisional_last=True)])
    (item,) = f.on_update(update(7, 9, closing), closing)
    assert (item.start_offset, len(item.records), item.replaces) == (9, 1, 0)
    revised = np.concatenate([bars(8, 10, close=9.0), bars(10, 11, provisional_last=True)])
    (item,) = f.on_update(update(8, 8, revised), revised)
    assert (item.start_offset, len(item.records), item.replaces) == (8, 2, 2)
    assert not item.provisional.any()


def test_heartbeat_ahead_means_missed_messages() -> None:
    f = live()
    f.on_heartbeat(5)
    assert f.state == "live"
    f.on_heartbeat(6)
    assert f.state == "init"


def test_epoch_change_starts_over() -> None:
    f = live()
    other = gp.Update(epoch="new", seq=1, start=0, count=0, end=0, closed_end=0)
    assert f.on_update(other, empty(0)) == []
    assert f.request(9) == gp.Snapshot(topic="T", last=3, id=9)
    # The fresh snapshot supersedes everything the consumer holds: a "reset" that says so.
    fresh = bars(0, 4, close=3.0)
    new = gp.Records(id=9, topic="T", epoch="new", seq=1, start=0, count=4, end=4)
    (item,) = f.on_reply(new, fresh)
    assert (item.kind, item.start_offset, item.replaces, len(item.records)) == ("reset", 0, 3, 4)


def test_times_and_frames() -> None:
    assert ms("2026-01-01") == 1_767_225_600_000
    assert ms("2026-01-01T00:01:00+00:00") == 1_767_225_660_000
    assert ms(5) == 5 and ms(None) is None
    with pytest.raises(TypeError):
        ms(True)
    df = to_pandas(bars(0, 3, provisional_last=True))
    assert list(df["provisional"]) == [False, False, True]
    assert str(df.index.tz) == "UTC"
    pytest.importorskip("polars", reason="polars is an optional extra (barstream[frames])")
    assert to_polars(bars(0, 3)).height == 3
