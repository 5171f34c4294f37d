"""journal.py with small arrays: the live tail rule, late days before the live one,
revisions, gaps and their fill, the replay of cached days, the index rebuilt on restart."""

from __future__ import annotations

import numpy as np

from barstream.services.downloader.journal import Entry, Journal
from barstream.shared.record import (
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    FLAG_SKIPPED,
    JOURNAL_DAY,
    JOURNAL_DTYPE,
    JOURNAL_GAP,
    JOURNAL_LIVE,
)
from barstream.shared.timeframe import DAY_MS

D0 = 20_000 * DAY_MS  # a UTC midnight
NOW = 1_800_000_000_000


def day(i: int) -> int:
    return D0 + i * DAY_MS


class Store:
    """The journal store as an array: what applying the entries in order gives."""

    def __init__(self, records: np.ndarray | None = None) -> None:
        self.records = np.zeros(0, JOURNAL_DTYPE) if records is None else records

    def apply(self, entry: Entry | None) -> Entry | None:
        if entry is not None:
            assert 0 <= entry.start <= len(self.records)
            assert len(entry.bodies) == len(entry.records)
            self.records = np.concatenate([self.records[: entry.start], entry.records])
        return entry

    @property
    def kinds(self) -> list[int]:
        return [int(k) for k in self.records["kind"]]

    @property
    def days(self) -> list[int]:
        return [int(t - D0) // DAY_MS for t in self.records["ts_ms"]]


def final(j: Journal, i: int, digest: int, *, attempts: int = 1) -> Entry | None:
    return j.final(day(i), b"x" * (10 + i), digest, 200, attempts, NOW)


def live(j: Journal, i: int, digest: int) -> Entry | None:
    return j.live(day(i), 7, digest, 200, 1, NOW)


def test_a_final_day_is_one_day_record() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    e = s.apply(final(j, 0, 11))
    assert e is not None and e.start == 0 and e.bodies == (b"x" * 10,)
    rec = s.records[0]
    assert (int(rec["ts_ms"]), int(rec["kind"]), int(rec["digest"])) == (day(0), JOURNAL_DAY, 11)
    assert (int(rec["body_len"]), int(rec["http_status"]), int(rec["attempts"])) == (10, 200, 1)
    assert (int(rec["version"]), int(rec["flags"]), int(rec["src_offset"])) == (1, 0, -1)
    assert int(rec["fetched_ms"]) == NOW
    assert final(j, 0, 11) is None  # the same content again: nothing to write (a restart)
    # read from the raw cache (no request): no fetch time
    s.apply(final(j, 1, 12, attempts=0))
    assert int(s.records["fetched_ms"][1]) == 0 and j.length == 2


def test_the_live_record_stays_the_journals_last() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    e = s.apply(live(j, 1, 21))
    assert e is not None and e.start == 1 and e.bodies == (b"",)
    assert s.kinds == [JOURNAL_DAY, JOURNAL_LIVE] and j.live_tail
    assert int(s.records["flags"][1]) == FLAG_LIVE | FLAG_PROVISIONAL
    assert live(j, 1, 21) is None  # an unchanged poll writes nothing
    e = s.apply(live(j, 1, 22))  # a changed poll rewrites the tail in place
    assert e is not None and e.start == 1 and len(s.records) == 2
    assert int(s.records["digest"][1]) == 22 and int(s.records["version"][1]) == 1
    # the day is over: its final record replaces the live one
    e = s.apply(final(j, 1, 23))
    assert e is not None and e.start == 1 and len(e.records) == 1
    assert s.kinds == [JOURNAL_DAY, JOURNAL_DAY] and not j.live_tail
    assert int(s.records["version"][1]) == 2 and int(s.records["flags"][1]) == 0


def test_a_late_day_goes_before_the_live_one() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    s.apply(j.gap(day(1)))
    s.apply(live(j, 2, 30))
    assert j.gaps == 1
    e = s.apply(final(j, 1, 20))  # the gap filled while day 2 is live
    assert e is not None and e.start == 2 and e.bodies == (b"x" * 11, b"")
    assert s.days == [0, 1, 1, 2] and s.kinds[-2:] == [JOURNAL_DAY, JOURNAL_LIVE]
    assert int(s.records["digest"][3]) == 30 and j.live_tail and j.gaps == 0
    # the live record moved: a changed poll rewrites it at its new offset
    e = s.apply(live(j, 2, 31))
    assert e is not None and e.start == 3 and len(s.records) == 4
    assert j.days[day(2)].offset == 3 and j.days[day(1)].offset == 2


def test_a_revision_is_flagged_and_versioned() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    s.apply(final(j, 1, 20))
    assert j.holds(day(0), 10) and not j.holds(day(0), 11)
    e = s.apply(final(j, 0, 11))
    assert e is not None and e.start == 2
    rec = s.records[2]
    assert int(rec["flags"]) == FLAG_REVISED and int(rec["version"]) == 2
    assert j.days[day(0)].offset == 2 and final(j, 0, 11) is None
    s.apply(final(j, 0, 12))
    assert int(s.records["version"][3]) == 3


def test_a_gap_is_explicit_counted_and_filled() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    e = s.apply(j.gap(day(1)))
    assert e is not None and e.bodies == (b"",)
    rec = s.records[1]
    assert int(rec["kind"]) == JOURNAL_GAP and int(rec["body_len"]) == 0
    assert (int(rec["digest"]), int(rec["attempts"]), int(rec["fetched_ms"])) == (0, 0, 0)
    assert j.gaps == 1 and j.gap_days_ms() == [day(1)]
    assert j.gap(day(1)) is None and j.gap(day(0)) is None  # a known gap, a good day: kept
    s.apply(final(j, 1, 20))
    rec = s.records[2]
    assert int(rec["kind"]) == JOURNAL_DAY and int(rec["version"]) == 2
    assert int(rec["flags"]) == 0  # a filled gap is no revision
    assert j.gaps == 0 and j.gap_days_ms() == []
    assert j.resume_day_ms() == day(2)


def test_a_skipped_day_is_an_explicit_gap_after_its_bad_version() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    s.apply(final(j, 1, 66))  # the bad version (the transformer holds at it)
    s.apply(final(j, 2, 30))
    e = s.apply(j.skip(day(1), 66, NOW + 5))
    assert e is not None and e.start == 3 and e.bodies == (b"",)
    rec = s.records[3]
    assert (int(rec["kind"]), int(rec["flags"])) == (JOURNAL_GAP, FLAG_SKIPPED | FLAG_REVISED)
    assert (int(rec["digest"]), int(rec["fetched_ms"]), int(rec["version"])) == (66, NOW + 5, 2)
    assert int(rec["body_len"]) == 0
    assert j.gaps == j.skipped == 1 and j.skipped_days_ms() == [day(1)]
    assert j.gap_days_ms() == [day(1)]
    # said already; the skipped version again (a re-fetch, a replay) writes nothing
    assert j.skip(day(1), 66, NOW + 9) is None
    assert final(j, 1, 66) is None and j.replay([(day(1), b"bad", 66)]) is None
    assert j.gap(day(1)) is None
    assert j.resume_day_ms() == day(3)
    # another version fills it
    s.apply(final(j, 1, 67))
    assert s.kinds[-1] == JOURNAL_DAY and int(s.records["flags"][-1]) == 0
    assert j.gaps == j.skipped == 0
    # a stale skip (of a version that is not the day's any more) writes nothing
    assert j.skip(day(1), 66, NOW) is None
    assert Journal(s.records.copy()).days == j.days


def test_a_day_with_no_body_can_be_skipped_and_not_the_live_day() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(j.gap(day(0)))  # failed after retries
    s.apply(j.skip(day(0), 0, NOW))
    assert [int(f) for f in s.records["flags"]] == [0, FLAG_SKIPPED]
    assert j.gaps == j.skipped == 1
    s.apply(j.skip(day(1), 0, NOW))  # a day the journal has not reached: skipped at once
    assert s.days == [0, 0, 1] and j.skipped == 2
    s.apply(live(j, 2, 40))
    assert j.skip(day(2), 0, NOW) is None
    again = Journal(s.records.copy())
    assert (again.gaps, again.skipped) == (j.gaps, j.skipped) == (2, 2)


def test_replay_skips_unchanged_cached_days() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10, attempts=0))
    s.apply(final(j, 1, 20, attempts=0))
    cached = [(day(0), b"a", 10), (day(1), b"bb", 21), (day(2), b"ccc", 30)]
    e = s.apply(j.replay(cached))
    assert e is not None and e.start == 2 and e.bodies == (b"bb", b"ccc")
    assert s.days == [0, 1, 1, 2]
    assert [int(f) for f in s.records["flags"][2:]] == [FLAG_REVISED, 0]
    assert [int(v) for v in s.records["version"][2:]] == [2, 1]
    assert j.replay(cached) is None  # everything already journaled (a restart)
    assert j.length == 4 and j.resume_day_ms() == day(3)


def test_replay_writes_what_final_writes_day_by_day() -> None:
    cached = [(day(i), bytes([65 + i]) * (i + 1), 100 + i) for i in range(5)]
    one, by_one = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    by_one.apply(final(one, 1, 101))
    by_one.apply(one.gap(day(3)))
    many, by_many = Journal(by_one.records.copy()), Store(by_one.records.copy())
    for day_ms, body, digest in cached:
        by_one.apply(one.final(day_ms, body, digest, 200, 0, NOW))
    by_many.apply(many.replay(cached))
    assert by_many.records.tobytes() == by_one.records.tobytes()
    assert many.days == one.days and many.gaps == one.gaps == 0


def test_the_index_is_rebuilt_from_the_journal() -> None:
    j, s = Journal(np.zeros(0, JOURNAL_DTYPE)), Store()
    s.apply(final(j, 0, 10))
    s.apply(j.gap(day(1)))
    s.apply(final(j, 0, 11))
    s.apply(live(j, 2, 30))
    again = Journal(s.records.copy())
    assert again.days == j.days and again.gaps == j.gaps == 1
    assert again.length == j.length == 4 and again.live_tail
    assert again.resume_day_ms() == day(2)
    # after a restart the rules hold as before: a late day still goes before the live one
    a, b = Store(s.records.copy()), Store(s.records.copy())
    a.apply(final(j, 1, 20))
    b.apply(final(again, 1, 20))
    assert a.records.tobytes() == b.records.tobytes()
    assert a.kinds[-1] == JOURNAL_LIVE
