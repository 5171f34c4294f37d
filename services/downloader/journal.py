"""The fetch journal of one (symbol, side): which records each fetch outcome writes.

Pure: no I/O, no clock, no sockets. A ``Journal`` holds the day index of one journal store
(``SYMBOL/SIDE/fetch``, ``JOURNAL_DTYPE``), rebuilt from its records at start. Each method
takes one outcome (a final day's body, a failed day, a live poll, a run of cached days) and
returns the ``Entry`` to write — "from offset ``start`` on, the journal now reads
``records``" — or None when the journal already says so. The index follows the entry at
once: the caller writes every entry it gets, in order (the downloader turns each into a
``Change`` for ``Service.apply``; a failed write ends the process, and the index is rebuilt
from the committed journal on restart).

Rules (what the transformer can rely on):

- A final day (``final``) is one ``DAY`` record; a day already journaled with the same
  digest writes nothing (a restart, an unchanged re-fetch); a changed one is appended again
  with ``FLAG_REVISED``. ``version`` is 1 + the day's previous record's version.
- A day that failed (``gap``) is one ``GAP`` record (no body), counted in ``gaps``, unless
  the day is already journaled final or as a gap; a later ``final`` fills it.
- A day the user skipped (``skip``, ``barstream skip-day``) is one ``GAP`` record with
  ``FLAG_SKIPPED`` whose ``digest`` names the skipped version (0: the day has no body) and
  whose ``fetched_ms`` is when the user decided; counted in ``gaps`` and in ``skipped``. It
  follows the day's bad ``DAY`` record when there is one (a new version of the day:
  ``FLAG_REVISED``), so a transformer held at that record moves past it. A body with the
  skipped digest is that version again: ``final`` and ``replay`` write nothing for it; a
  body with another digest is a new version and fills the gap.
- The current day (``live``) is one ``LIVE`` record (``FLAG_LIVE | FLAG_PROVISIONAL``,
  version 1), always the journal's last: a changed poll rewrites it in place, the day's
  final record (or gap) replaces it, and a late or revised day written while a live record
  is the tail goes before it (the tail becomes [new record, live record]).
- ``replay`` journals a run of cached (final) days with one entry: each record is what
  ``final`` writes for a body read from the raw cache (status 200, no attempts).
- ``fetched_ms`` is 0 for a record made without a request (from the raw cache).
- Every record is **sealed**: its last byte (``reserved``) is a CRC-8 of bytes 0–62
  (``seal``), so a damaged byte in any field — the informational ones included (fetch
  time, status, attempts), which nothing could recompute — is found when the downloader
  opens its journal (``first_unsealed``) and by ``barstream verify``. A journal written
  before seals existed (every check byte 0) is read unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

__all__ = ["DayState", "Entry", "Journal", "first_unsealed", "seal"]


def _crc8_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint8)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table[i] = c
    return table


#: CRC-8 (polynomial 0x07): every error confined to 8 consecutive bits — any one damaged
#: byte — changes it.
_CRC8 = _crc8_table()


def _check_bytes(records: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(records).view(np.uint8).reshape(len(records), -1)
    crc = np.zeros(len(records), dtype=np.uint8)
    for j in range(raw.shape[1] - 1):
        crc = _CRC8[crc ^ raw[:, j]]
    return crc


def seal(records: np.ndarray) -> np.ndarray:
    """Set each journal record's check byte (``reserved``: CRC-8 of bytes 0–62); in place."""
    records["reserved"] = _check_bytes(records)
    return records


def first_unsealed(records: np.ndarray) -> int | None:
    """The offset of the first record whose check byte does not match (None: all do, or
    the journal predates seals: every check byte 0)."""
    if not len(records) or not records["reserved"].any():
        return None
    bad = np.flatnonzero(_check_bytes(records) != records["reserved"])
    return int(bad[0]) if len(bad) else None


@dataclass(slots=True)
class DayState:
    """A day's latest record in the journal."""

    offset: int
    kind: int
    digest: int
    version: int
    skipped: bool = False  # a GAP the user chose (FLAG_SKIPPED)


@dataclass(frozen=True, slots=True)
class Entry:
    """From offset ``start`` on, the journal reads ``records`` (and nothing after them).
    ``bodies[i]`` is the response body of ``records[i]`` when it is a final day fetched or
    read just now (kept for the feed's attachments), else ``b""``."""

    start: int
    records: np.ndarray
    bodies: tuple[bytes, ...]


class Journal:
    """The day index of one fetch journal and the rules above."""

    def __init__(self, records: np.ndarray) -> None:
        self.days: dict[int, DayState] = {}  # day_ms → the day's latest record
        self.gaps = 0  # days whose latest record is a GAP
        self.skipped = 0  # of those, the days the user skipped (FLAG_SKIPPED)
        self.length = 0
        self._live: np.ndarray | None = None  # the tail (one record) while it is LIVE
        self._index(0, records)

    @property
    def live_tail(self) -> bool:
        """The journal's last record is a live (provisional) day."""
        return self._live is not None

    def resume_day_ms(self) -> int | None:
        """The day after the last final (``DAY`` or ``GAP``) day, None if there is none."""
        finals = [d for d, s in self.days.items() if s.kind in (JOURNAL_DAY, JOURNAL_GAP)]
        return max(finals) + DAY_MS if finals else None

    def gap_days_ms(self) -> list[int]:
        """Days whose latest record is a gap, in date order."""
        return [d for d, s in sorted(self.days.items()) if s.kind == JOURNAL_GAP]

    def skipped_days_ms(self) -> list[int]:
        """Days whose latest record is a gap the user skipped, in date order."""
        return [d for d, s in sorted(self.days.items()) if s.skipped]

    def holds(self, day_ms: int, digest: int) -> bool:
        """The day is journaled final with this content."""
        prev = self.days.get(day_ms)
        return prev is not None and prev.kind == JOURNAL_DAY and prev.digest == digest

    def decided(self, day_ms: int, digest: int) -> bool:
        """The journal already says what a body with this digest means for the day: it is
        the day's final content, or the version the user skipped."""
        prev = self.days.get(day_ms)
        return (
            prev is not None
            and prev.digest == digest
            and (prev.kind == JOURNAL_DAY or prev.skipped)
        )

    def final(
        self, day_ms: int, body: bytes, digest: int, status: int, attempts: int, fetched_ms: int
    ) -> Entry | None:
        """A final day's body (``attempts`` 0: read from the raw cache)."""
        if self.decided(day_ms, digest):
            return None
        prev = self.days.get(day_ms)
        flags = FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0
        rec = _record(day_ms, JOURNAL_DAY, len(body), digest, status, attempts, flags, prev)
        rec["fetched_ms"] = fetched_ms if attempts else 0
        return self._put(rec, body)

    def gap(self, day_ms: int) -> Entry | None:
        """A day that still failed after retries."""
        prev = self.days.get(day_ms)
        if prev is not None and prev.kind in (JOURNAL_DAY, JOURNAL_GAP):
            return None  # keep the good version / the known gap
        return self._put(_record(day_ms, JOURNAL_GAP, 0, 0, 0, 0, 0, prev), b"")

    def skip(self, day_ms: int, digest: int, skipped_ms: int) -> Entry | None:
        """The user skipped the day's version with ``digest`` (0: the day has no body):
        an explicit gap. Nothing when the journal already says so, when its latest record
        is another version (a good one arrived: nothing left to skip) or the live day."""
        prev = self.days.get(day_ms)
        if prev is not None:
            if prev.skipped and prev.digest == digest:
                return None  # said already
            if prev.kind == JOURNAL_DAY and prev.digest != digest:
                return None  # another version is the day's content
            if prev.kind == JOURNAL_LIVE:
                return None  # the current day is no history to skip
        flags = FLAG_SKIPPED | (
            FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0
        )
        rec = _record(day_ms, JOURNAL_GAP, 0, digest, 0, 0, flags, prev)
        rec["fetched_ms"] = skipped_ms
        return self._put(rec, b"")

    def live(
        self, day_ms: int, body_len: int, digest: int, status: int, attempts: int, fetched_ms: int
    ) -> Entry | None:
        """A poll of the current day (its body is kept by the caller, by digest)."""
        prev = self.days.get(day_ms)
        if prev is not None and prev.kind == JOURNAL_LIVE and prev.digest == digest:
            return None
        flags = FLAG_LIVE | FLAG_PROVISIONAL
        rec = _record(day_ms, JOURNAL_LIVE, body_len, digest, status, attempts, flags, None)
        rec["fetched_ms"] = fetched_ms if attempts else 0
        return self._put(rec, b"")

    def replay(self, days: Sequence[tuple[int, bytes, int]]) -> Entry | None:
        """Consecutive cached days ``(day_ms, body, digest)`` → one entry appending the
        records ``final`` would write for each (days already held are skipped). The journal
        must not end with a live record (``final`` keeps it last, day by day)."""
        assert self._live is None, "replay appends: the live tail must be written day by day"
        ts: list[int] = []
        lens: list[int] = []
        digests: list[int] = []
        versions: list[int] = []
        flags: list[int] = []
        bodies: list[bytes] = []
        for day_ms, body, digest in days:
            prev = self.days.get(day_ms)
            if self.decided(day_ms, digest):
                continue  # already in the journal (restart), or the version the user skipped
            ts.append(day_ms)
            lens.append(len(body))
            digests.append(digest)
            versions.append(prev.version + 1 if prev is not None else 1)
            flags.append(FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0)
            bodies.append(body)
        if not ts:
            return None
        recs = np.zeros(len(ts), dtype=JOURNAL_DTYPE)
        recs["ts_ms"] = ts
        recs["body_len"] = lens
        recs["digest"] = np.array(digests, dtype=np.uint64)
        recs["http_status"] = 200
        recs["version"] = versions
        recs["kind"] = JOURNAL_DAY
        recs["src_offset"] = -1
        recs["flags"] = flags
        seal(recs)
        start = self.length
        for i in range(len(ts)):
            self._set_day(ts[i], DayState(start + i, JOURNAL_DAY, digests[i], versions[i]))
        self.length = start + len(ts)
        return Entry(start, recs, tuple(bodies))

    # -- the index ---------------------------------------------------------------------

    def _put(self, rec: np.ndarray, body: bytes) -> Entry:
        """Append ``rec`` (sealed here), keeping a live record as the journal's last."""
        seal(rec)
        at, recs = self.length, rec
        bodies: tuple[bytes, ...] = (body,)
        live = self._live
        if live is not None:
            at = self.length - 1
            if int(rec["kind"][0]) != JOURNAL_LIVE and int(live["ts_ms"][0]) > int(rec["ts_ms"][0]):
                # a late/revised day goes before the live one
                recs, bodies = np.concatenate([rec, live]), (body, b"")
            # else: the live day changed, finished (its final record), or a new day began
        self._index(at, recs)
        return Entry(at, recs, bodies)

    def _index(self, start: int, recs: np.ndarray) -> None:
        """The journal now reads ``recs`` from ``start`` on."""
        for i, r in enumerate(recs):
            kind = int(r["kind"])
            skipped = kind == JOURNAL_GAP and bool(int(r["flags"]) & FLAG_SKIPPED)
            self._set_day(
                int(r["ts_ms"]),
                DayState(start + i, kind, int(r["digest"]), int(r["version"]), skipped),
            )
        self.length = start + len(recs)
        if len(recs):
            self._live = recs[-1:].copy() if int(recs["kind"][-1]) == JOURNAL_LIVE else None

    def _set_day(self, day_ms: int, state: DayState) -> None:
        prev = self.days.get(day_ms)
        self.gaps += (state.kind == JOURNAL_GAP) - (prev is not None and prev.kind == JOURNAL_GAP)
        self.skipped += state.skipped - (prev is not None and prev.skipped)
        self.days[day_ms] = state


def _record(
    day_ms: int,
    kind: int,
    body_len: int,
    digest: int,
    status: int,
    attempts: int,
    flags: int,
    prev: DayState | None,
) -> np.ndarray:
    rec = np.zeros(1, dtype=JOURNAL_DTYPE)
    rec["ts_ms"] = day_ms
    rec["body_len"] = body_len
    rec["digest"] = digest
    rec["http_status"] = status
    rec["attempts"] = attempts
    rec["version"] = (prev.version + 1) if prev is not None and kind != JOURNAL_LIVE else 1
    rec["kind"] = kind
    rec["src_offset"] = -1
    rec["flags"] = flags
    return rec
