"""The gateway's pure core: no sockets, no files — functions on arrays and small state.

- ``resolve_history`` / ``resolve_snapshot``: which offsets of a topic's committed series a
  request gets, or a ``GatewayError`` naming what was wrong (the reply's error code + text);
- ``SeqLog``: a topic's sequence number plus a log of the messages that rewound the
  series, exact for recent messages, conservative for old ones (start < the previous end) — it answers "from which
  offset did anything change after message S?" for a consumer's resync, and is kept in
  the gateway's checkpoint so it survives restarts;
- ``first_difference`` / ``closed_end`` / ``split``: helpers the gateway and the client share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from barstream.shared.errors import GatewayError
from barstream.shared.gateway_protocol import History, Snapshot
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_SIZE

#: Rewinding messages a topic's SeqLog remembers exactly (older ones fold into its floor).
SEQLOG_MEMORY: Final = 2048
#: ... of which the checkpoint keeps this many (a restart folds the rest).
SEQLOG_PERSIST: Final = 16


@dataclass(frozen=True)
class Span:
    """Offsets [start, stop) of a topic's series to send; ``more``: the answer continues."""

    start: int
    stop: int
    more: bool = False


def resolve_history(req: History, times_ms: np.ndarray, max_records: int) -> Span:
    """The span of ``times_ms`` (the committed bars' open times, ascending) a history
    request gets: ``[start_ms, end_ms)`` (open bounds when None) or the last ``last`` bars.
    A range over ``max_records`` is cut to its first ``max_records`` bars with ``more`` —
    at a change of open time, so the records of one bar (a feature store's bar and its
    feature records share its ``ts_ms``) are never split between pages."""
    n = len(times_ms)
    if req.last is not None:
        if req.start_ms is not None or req.end_ms is not None:
            raise GatewayError("invalid-field", "give either last or start_ms/end_ms, not both")
        _check_last(req.last, max_records)
        return Span(max(0, n - req.last), n)
    if req.start_ms is not None and req.end_ms is not None and req.start_ms > req.end_ms:
        raise GatewayError(
            "bad-range", f"start_ms {req.start_ms} is after end_ms {req.end_ms}; swap them"
        )
    lo = 0 if req.start_ms is None else int(np.searchsorted(times_ms, req.start_ms, "left"))
    hi = n if req.end_ms is None else int(np.searchsorted(times_ms, req.end_ms, "left"))
    if hi - lo > max_records:
        cut = int(np.searchsorted(times_ms, times_ms[lo + max_records], "left"))
        return Span(lo, cut if cut > lo else lo + max_records, more=True)
    return Span(lo, hi)


def resolve_snapshot(req: Snapshot, length: int, epoch: str, log: SeqLog, max_records: int) -> Span:
    """The span a snapshot request gets from a series ``length`` records long.

    ``since_seq < 0``: the last ``last`` bars. Otherwise (a resync of a consumer that holds
    the series as of message ``since_seq``, up to ``from_offset``): from the lowest offset
    any later message changed, or ``from_offset`` when lower, to the end — at most
    ``max_records`` of them (``more``: ask again with the reply's seq and end)."""
    if req.since_seq < 0:
        _check_last(req.last, max_records)
        return Span(max(0, length - req.last), length)
    if req.epoch != epoch:
        raise GatewayError(
            "stale-epoch",
            f"epoch {req.epoch!r} is not this topic's {epoch!r}: the gateway store was "
            "rebuilt; request a fresh snapshot (since_seq -1)",
        )
    if req.since_seq > log.seq:
        raise GatewayError(
            "bad-range",
            f"since_seq {req.since_seq} is ahead of the topic's seq {log.seq}; "
            "request a fresh snapshot (since_seq -1)",
        )
    if req.from_offset < 0:
        raise GatewayError("invalid-field", "a resync (since_seq >= 0) needs from_offset >= 0")
    start = min(req.from_offset, length)
    changed = log.changed_since(req.since_seq)
    if changed is not None:
        start = min(start, changed)
    if length - start > max_records:
        return Span(start, start + max_records, more=True)
    return Span(start, length)


def _check_last(last: int, max_records: int) -> None:
    if last < 0:
        raise GatewayError("bad-range", f"last {last} is negative")
    if last > max_records:
        raise GatewayError(
            "too-large",
            f"last {last} exceeds max_request_records {max_records}; "
            "ask for a time range (answered in pages) instead",
        )


@dataclass
class SeqLog:
    """A topic's last published ``seq`` and the messages that rewound its series.

    ``rewinds`` holds ``(seq, start)`` exactly for the last ``SEQLOG_MEMORY`` rewinding
    messages (start < the series' previous end); older ones are folded into a *floor*:
    messages up to ``floor_seq`` rewound from ``floor_low`` at the lowest (-1: none). So
    "from which offset did anything change after message S?" is exact for recent S and
    conservative (never above the truth) for older S — a consumer may be sent records it
    already holds, which it recognises, but never misses a change. Only the last
    ``SEQLOG_PERSIST`` entries go into the checkpoint (the rest folded)."""

    seq: int = 0
    rewinds: list[tuple[int, int]] = field(default_factory=list)
    floor_seq: int = 0
    floor_low: int = -1

    def record(self, start: int, previous_end: int) -> int:
        """Note one published message starting at ``start``; returns its seq."""
        self.seq += 1
        if start < previous_end:
            self.rewinds.append((self.seq, start))
            if len(self.rewinds) > SEQLOG_MEMORY:
                self._fold(len(self.rewinds) - SEQLOG_MEMORY // 2)
        return self.seq

    def changed_since(self, seq: int) -> int | None:
        """Lowest offset a message after ``seq`` rewound (None: only growth since then)."""
        lows = [low for hi, low in self.rewinds if hi > seq]
        if seq < self.floor_seq and self.floor_low >= 0:
            lows.append(self.floor_low)
        return min(lows) if lows else None

    def _fold(self, n: int) -> None:
        for _, low in self.rewinds[:n]:
            self.floor_low = low if self.floor_low < 0 else min(self.floor_low, low)
        self.floor_seq = self.rewinds[n - 1][0]
        del self.rewinds[:n]

    def to_json(self) -> list[int]:
        """``[seq, floor_seq, floor_low, seq1, low1, ...]`` with at most SEQLOG_PERSIST pairs."""
        kept = SeqLog(self.seq, list(self.rewinds), self.floor_seq, self.floor_low)
        if len(kept.rewinds) > SEQLOG_PERSIST:
            kept._fold(len(kept.rewinds) - SEQLOG_PERSIST)
        flat = [kept.seq, kept.floor_seq, kept.floor_low]
        for hi, low in kept.rewinds:
            flat += [hi, low]
        return flat

    @classmethod
    def from_json(cls, value: object) -> SeqLog:
        """Rebuild from ``to_json``'s list; anything else is a corrupt checkpoint entry."""
        if (
            not isinstance(value, list)
            or len(value) < 3
            or len(value) % 2 != 1
            or not all(isinstance(x, int) and x >= -1 for x in value)
        ):
            raise ValueError(f"seq log {value!r} is not [seq, floor_seq, floor_low, seq, low, ...]")
        pairs = [(value[i], value[i + 1]) for i in range(3, len(value), 2)]
        return cls(value[0], pairs, value[1], value[2])


def split(start: int, end: int, max_records: int) -> list[tuple[int, int]]:
    """[start, end) as consecutive spans of at most ``max_records`` (one empty span when
    start == end: a pure truncation still needs its message)."""
    if start >= end:
        return [(start, start)]
    return [(a, min(a + max_records, end)) for a in range(start, end, max_records)]


def first_difference(old: np.ndarray, new: np.ndarray) -> int:
    """Index of the first record that differs byte-wise between two record arrays
    (``min(len(old), len(new))`` when one is a prefix of the other)."""
    k = min(len(old), len(new))
    if k == 0:
        return 0
    a = np.ascontiguousarray(old[:k]).view(np.uint8).reshape(k, RECORD_SIZE)
    b = np.ascontiguousarray(new[:k]).view(np.uint8).reshape(k, RECORD_SIZE)
    differ = np.flatnonzero((a.view(np.uint64) != b.view(np.uint64)).any(axis=1))
    return int(differ[0]) if len(differ) else k


def closed_end(records: np.ndarray, base: int = 0) -> int:
    """Offset (``base`` + index) of the first provisional record; ``base + len`` if none."""
    provisional = np.flatnonzero(records["flags"] & FLAG_PROVISIONAL)
    return base + (int(provisional[0]) if len(provisional) else len(records))
