"""The Clone-pattern follower driven by hand-made messages, no sockets: late join, duplicate
updates dropped, gap → resync request, rewinds and revisions, truncation."""

from __future__ import annotations

import numpy as np

from barstream.services.gateway.follower import Follower
from barstream.shared import gateway_protocol as gp
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED, empty

E = "epoch-1"
T = "EUR-USD/BID/1m"


def bars(lo: int, hi: int, *, close: float = 1.0, provisional_last: bool = False) -> np.ndarray:
    r = empty(hi - lo)
    r["ts_ms"] = np.arange(lo, hi) * 60_000
    r["close"] = close
    if provisional_last and len(r):
        r["flags"][-1] = FLAG_PROVISIONAL
    return r


def records_reply(seq: int, start: int, records: np.ndarray, rid: int = 1) -> gp.Records:
    n = len(records)
    return gp.Records(id=rid, topic=T, epoch=E, seq=seq, start=start, count=n, end=start + n)


def update(seq: int, start: int, records: np.ndarray) -> gp.Update:
    n = len(records)
    return gp.Update(epoch=E, seq=seq, start=start, count=n, end=start + n, closed_end=0)


def heartbeat(seq: int) -> gp.Heartbeat:
    return gp.Heartbeat(instance="i", wall_ms=0, interval_ms=1000, seqs={T: seq})


def joined(history: int = 10, seq: int = 5, n: int = 10) -> Follower:
    """A follower that holds bars [0, n) as of message ``seq``."""
    f = Follower(T, history, closed_only=False)
    f.request(1)
    f.on_reply(records_reply(seq, 0, bars(0, n)), bars(0, n))
    assert f.state == "live" and f.seq == seq and f.series.end == n
    return f


def test_late_join_drops_buffered_updates_the_snapshot_covers() -> None:
    f = Follower(T, 10, closed_only=False)
    assert f.request(1) == gp.Snapshot(topic=T, last=10, id=1)
    # Updates published while the snapshot is on its way: seq 4 and 5 are in it, 6 is not.
    for seq, lo in ((4, 7), (5, 8), (6, 10)):
        assert f.on_update(update(seq, lo, bars(lo, lo + 1)), bars(lo, lo + 1)) == []
    items = f.on_reply(records_reply(5, 0, bars(0, 10)), bars(0, 10))
    assert [(i.kind, i.start_offset, len(i.records), i.seq) for i in items] == [
        ("history", 0, 10, 5),
        ("update", 10, 1, 6),
    ]
    assert f.seq == 6 and f.series.end == 11


def test_duplicate_update_is_dropped() -> None:
    f = joined()
    (item,) = f.on_update(update(6, 10, bars(10, 11)), bars(10, 11))
    assert (item.start_offset, item.replaces) == (10, 0)
    assert f.on_update(update(6, 10, bars(10, 11)), bars(10, 11)) == []  # seen: seq 6 again
    assert f.on_update(update(3, 0, bars(0, 11, close=7.0)), bars(0, 11, close=7.0)) == []
    assert f.seq == 6 and f.series.end == 11 and f.state == "live"
    assert f.series.view(0, 11)["close"].tolist() == [1.0] * 11  # the old seq changed nothing


def test_sequence_gap_asks_for_a_resync_from_the_last_applied_seq() -> None:
    f = joined()
    assert f.on_update(update(7, 10, bars(10, 11)), bars(10, 11)) == []  # seq 6 lost
    assert f.state == "init"
    assert f.request(2) == gp.Snapshot(topic=T, since_seq=5, from_offset=10, epoch=E, id=2)
    (item,) = f.on_reply(records_reply(7, 10, bars(10, 12), rid=2), bars(10, 12))
    assert (item.kind, item.start_offset, len(item.records), f.seq) == ("resync", 10, 2, 7)


def test_heartbeat_ahead_of_the_last_applied_seq_asks_for_a_resync() -> None:
    f = joined()
    f.on_heartbeat(heartbeat(5).seqs.get(T))
    assert f.state == "live"  # nothing missed
    f.on_heartbeat(heartbeat(6).seqs.get(T))  # the gateway published seq 6, we never saw it
    assert f.state == "init"
    assert f.request(3).since_seq == 5


def test_rewind_of_the_provisional_bar_and_a_revision_of_history() -> None:
    f = joined()
    # The open bar (offset 9) updated in place: one bar superseded.
    bar9 = bars(9, 10, close=2.0, provisional_last=True)
    (item,) = f.on_update(update(6, 9, bar9), bar9)
    assert (item.start_offset, len(item.records), item.replaces) == (9, 1, 1)
    assert item.provisional.tolist() == [True]
    # A revision from offset 3; bars 3 and 4 come back unchanged: the item starts at 5.
    revised = np.concatenate([bars(3, 5), bars(5, 10, close=3.0)])
    revised["flags"][2:] |= FLAG_REVISED
    (item,) = f.on_update(update(7, 3, revised), revised)
    assert (item.start_offset, len(item.records), item.replaces) == (5, 5, 5)
    assert (item.records["flags"] & FLAG_REVISED).all()
    assert f.series.view(0, 10)["close"].tolist() == [1.0] * 5 + [3.0] * 5


def test_truncation_supersedes_the_dropped_bars() -> None:
    f = joined()
    (item,) = f.on_update(update(6, 8, bars(8, 8)), bars(8, 8))
    assert (item.start_offset, len(item.records), item.replaces) == (8, 0, 2)
    assert f.series.end == 8


# -- resume from a saved position (the HTTP API's Last-Event-ID, stream(resume=…)) --------


def test_position_round_trips_and_rejects_what_is_not_one() -> None:
    from barstream.services.gateway.follower import Position

    p = Position("ab12", 7, 120)
    assert Position.decode(p.encode()) == p
    for bad in ("", "ab12.7", "ab12.x.1", "ab12.-1.3", "a b.1.2", "../x.1.2", "ab.1.2.3"):
        try:
            Position.decode(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_a_resumed_follower_asks_what_changed_since_its_position_and_repeats_nothing() -> None:
    from barstream.services.gateway.follower import Position

    first = joined(seq=5, n=10)  # a consumer that held [0, 10) as of seq 5, then went away
    saved = Position(E, first.seq, first.series.end)
    f = Follower(T, 10, closed_only=False)
    f.resume(saved)
    assert f.request(2) == gp.Snapshot(topic=T, since_seq=5, from_offset=10, epoch=E, id=2)
    # Meanwhile bar 9 was revised and bars 10, 11 came: the gateway answers from 9.
    fresh = bars(9, 12, close=2.0)
    items = f.on_reply(records_reply(8, 9, fresh, rid=2), fresh)
    assert [(i.kind, i.start_offset, len(i.records), i.replaces) for i in items] == [
        ("resync", 9, 3, 1)  # bar 9 supersedes the one the consumer holds; 10, 11 are new
    ]
    assert items[0].position == Position(E, 8, 12)


def test_a_resumed_follower_with_nothing_new_yields_nothing() -> None:
    from barstream.services.gateway.follower import Position

    f = Follower(T, 10, closed_only=False)
    f.resume(Position(E, 5, 10))
    f.request(2)
    empty_reply = bars(10, 10)
    assert f.on_reply(records_reply(5, 10, empty_reply, rid=2), empty_reply) == []
    assert f.state == "live"


def test_a_resumed_closed_only_follower_gives_each_closed_bar_once() -> None:
    from barstream.services.gateway.follower import Position

    f = Follower(T, 10, closed_only=True)
    f.resume(Position(E, 5, 10))  # closed bars [0, 10) were delivered
    f.request(2)
    fresh = bars(10, 13, provisional_last=True)  # 10, 11 closed; 12 forming
    items = f.on_reply(records_reply(6, 10, fresh, rid=2), fresh)
    assert [(i.start_offset, len(i.records), i.replaces) for i in items] == [(10, 2, 0)]
    assert items[0].position.end == 12
