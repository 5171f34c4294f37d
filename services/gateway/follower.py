"""The consumer's state machine for one topic (the ZeroMQ guide's Clone pattern), no I/O.

``Follower`` is fed decoded messages — snapshot/resync replies (``on_reply``), updates
(``on_update``), the topic's seq from heartbeats (``on_heartbeat``) — and returns the
``BarUpdate`` items the consumer is handed; ``request(id)`` is the snapshot request it needs
next (when ``state == "init"``). Its rules:

- the first reply (``since_seq`` -1) is the history item; updates that arrive while a
  request is on its way are buffered (at most ``BUFFER_MAX``, else resync again);
- updates with ``seq`` <= the last applied are covered already and dropped; the rest are
  applied in order (a change split into several messages is joined first);
- an update with ``seq`` > last + 1, one starting past the series' end, or a heartbeat seq
  above the last applied is a gap: ``state`` becomes "init" and the next request is a
  resync (``since_seq`` = last applied, ``from_offset`` = the end of the copy);
- a new ``epoch`` (the gateway store was rebuilt) starts over with a fresh snapshot,
  handed on as a "reset" item that says how many bars it supersedes;
- every change is compared with the copy (``Series``), so an item never repeats what the
  consumer holds; closed-only mode hands each closed bar once, plus revision items.

The socket side (``driver.py``) only decodes frames and routes them here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Final

import numpy as np

from barstream.services.gateway import query
from barstream.shared import gateway_protocol as gp
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE

log = logging.getLogger("barstream.gateway.client")

#: Updates buffered per topic while a snapshot is on its way; beyond it, resync again.
BUFFER_MAX: Final = 20_000
#: Records a stream keeps of its series (to recognise repeats after a resync).
KEEP_RECORDS: Final = 100_000


@dataclass(frozen=True)
class BarUpdate:
    """ "From ``start_offset`` on, ``topic``'s series now reads ``records``" (see module doc)."""

    topic: str
    seq: int  # the topic sequence number this item is current to
    start_offset: int
    records: np.ndarray
    replaces: int  # bars the consumer already received that this item supersedes
    kind: str  # "history" | "update" | "resync" | "reset"
    epoch: str = ""  # the gateway store's identity (a new one: the store was rebuilt)

    @property
    def position(self) -> Position:
        """Where a consumer that applied this item stands: pass it back as
        ``stream(..., resume={topic: position})`` to continue with no gap, no duplicate."""
        return Position(self.epoch, self.seq, self.end_offset)

    @property
    def end_offset(self) -> int:
        return self.start_offset + len(self.records)

    @property
    def provisional(self) -> np.ndarray:
        """Mask of the records that may still change (the open bar)."""
        mask: np.ndarray = (self.records["flags"] & FLAG_PROVISIONAL) != 0
        return mask


@dataclass(frozen=True)
class Position:
    """A consumer's place in a topic: the gateway store (``epoch``), the last message applied
    (``seq``) and the end of the series it holds (``end``; closed-only: of its closed bars)."""

    epoch: str
    seq: int
    end: int

    def encode(self) -> str:
        """``epoch.seq.end`` (the SSE event id of the HTTP API)."""
        return f"{self.epoch}.{self.seq}.{self.end}"

    @classmethod
    def decode(cls, text: str) -> Position:
        """The inverse of ``encode``; ValueError names what is wrong."""
        parts = text.strip().split(".")
        if len(parts) != 3 or not parts[0].isalnum() or len(parts[0]) > 64:
            raise ValueError(f"position {text[:80]!r} is not EPOCH.SEQ.END")
        try:
            seq, end = int(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"position {text[:80]!r}: SEQ and END must be integers") from None
        if seq < 0 or end < 0:
            raise ValueError(f"position {text[:80]!r}: SEQ and END must be >= 0")
        return cls(parts[0], seq, end)


class Series:
    """The consumer's copy of the tail of a series: records [base, base + n) in a buffer."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.base = 0
        self.n = 0
        self.buf = np.zeros(1024, dtype=RECORD_DTYPE)

    @property
    def end(self) -> int:
        return self.base + self.n

    def view(self, start: int, stop: int | None = None) -> np.ndarray:
        stop = self.end if stop is None else stop
        return self.buf[start - self.base : stop - self.base]

    def replace(self, start: int, records: np.ndarray) -> int:
        """Series[start:] = records. Returns the first offset that changed (== end when
        nothing did). A start below what is kept resets the copy to ``records``."""
        if start < self.base or self.n == 0:
            old_end = self.end
            self.reset(start, records)
            return start if (len(records) or start < old_end) else self.end
        held = self.view(start, min(self.end, start + len(records)))
        same = query.first_difference(held, records)
        first = start + same
        new_end = start + len(records)
        if same == len(records) and new_end == self.end:
            return self.end  # nothing changed
        need = new_end - self.base
        if need > len(self.buf):
            grown = np.zeros(max(need, 2 * len(self.buf)), dtype=RECORD_DTYPE)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[first - self.base : need] = records[same:]
        self.n = need
        if self.n > 2 * self.keep:
            drop = self.n - self.keep
            self.buf[: self.keep] = self.buf[drop : self.n]
            self.base += drop
            self.n = self.keep
        return first

    def reset(self, start: int, records: np.ndarray) -> None:
        """Series = ``records`` from offset ``start`` on (nothing kept before it)."""
        self.buf = np.zeros(max(1024, 2 * len(records)), dtype=RECORD_DTYPE)
        self.buf[: len(records)] = records
        self.base, self.n = start, len(records)


@dataclass
class Delta:
    """Consecutive pages / chunks joined before they are applied as one change."""

    start: int
    records: np.ndarray

    def add(self, start: int, records: np.ndarray) -> None:
        if start <= self.start:
            self.start, self.records = start, records.copy()
        else:
            keep = self.records[: start - self.start]
            self.records = np.concatenate([keep, records])

    @property
    def end(self) -> int:
        return self.start + len(self.records)


@dataclass
class Follower:
    """One topic: its series copy, its last applied seq, and what it waits for."""

    topic: str
    history: int
    closed_only: bool
    keep: int = KEEP_RECORDS
    epoch: str = ""
    seq: int = -1
    state: str = "init"  # init: wants a snapshot; fetch: waits for one; live
    series: Series = field(init=False)
    closed_end: int = 0  # offset of the first provisional record of the series
    yielded_closed: int = 0  # closed_only: offsets below this were yielded
    buffered: list[tuple[gp.Update, np.ndarray]] = field(default_factory=list)
    overflowed: bool = False
    chunk: Delta | None = None  # a multi-message update being joined
    chunk_seq: int = -1
    pages: Delta | None = None  # a multi-page resync being joined
    pages_seq: int = -1  # the seq the joined pages are current to
    received_from: int = 0  # lowest offset the consumer was given (the history item's start)
    resync_needed: bool = False  # reason to resync once the current fetch completes
    started: bool = False

    def __post_init__(self) -> None:
        self.series = Series(max(self.keep, self.history))

    def resume(self, at: Position) -> None:
        """Continue a consumer that holds the series up to ``at.end`` as of message
        ``at.seq`` (from a saved ``BarUpdate.position``): the first request is a resync from
        there, so the consumer gets only what changed or came since — no history item. A
        position in another epoch (the store was rebuilt since) gets a "reset" item."""
        self.started = True
        self.epoch, self.seq = at.epoch, at.seq
        self.series.reset(at.end, np.zeros(0, dtype=RECORD_DTYPE))
        self.closed_end = self.yielded_closed = at.end
        self.received_from = 0  # the consumer may hold everything below at.end

    # -- requests this follower needs ---------------------------------------------------

    def request(self, request_id: int) -> gp.Snapshot:
        self.state = "fetch"
        if not self.started or not self.epoch:
            return gp.Snapshot(topic=self.topic, last=self.history, id=request_id)
        if self.pages is not None:
            return gp.Snapshot(
                topic=self.topic,
                since_seq=self.pages_seq,
                from_offset=self.pages.end,
                epoch=self.epoch,
                id=request_id,
            )
        return gp.Snapshot(
            topic=self.topic,
            since_seq=self.seq,
            from_offset=self.series.end,
            epoch=self.epoch,
            id=request_id,
        )

    def lost(self) -> None:
        """The connection went away: ask again (a resync when we hold a series)."""
        self.state = "init"
        self.chunk = None
        self.pages = None
        self.buffered.clear()
        self.overflowed = False

    # -- inputs -------------------------------------------------------------------------

    def on_reply(self, reply: gp.Records, records: np.ndarray) -> list[BarUpdate]:
        if not self.started or reply.epoch != self.epoch:
            # First snapshot, or the gateway store was rebuilt: start over from this one.
            kind = "history" if not self.started else "reset"
            # A reset supersedes the bars the consumer was given: [received_from, its end).
            held_end = self.yielded_closed if self.closed_only else self.series.end
            replaces = (
                max(0, held_end - max(reply.start, self.received_from)) if self.started else 0
            )
            self.started = True
            self.epoch = reply.epoch
            self.seq = reply.seq
            self.pages = None
            self.received_from = reply.start
            self.series.reset(reply.start, records)
            self.closed_end = query.closed_end(records, reply.start)
            out: list[BarUpdate] = []
            if self.closed_only:
                out.append(self._item(reply.start, self.closed_end, replaces, kind))
                self.yielded_closed = self.closed_end
            else:
                out.append(self._item(reply.start, self.series.end, replaces, kind))
            return out + self._after_fetch()
        if self.pages is None:
            self.pages = Delta(reply.start, records.copy())
        else:
            self.pages.add(reply.start, records)
        self.pages_seq = reply.seq
        if reply.more:
            self.state = "init"  # ask for the next page (since this page's seq)
            return []
        pages, self.pages = self.pages, None
        self.seq = reply.seq
        return self._apply(pages.start, pages.records, "resync") + self._after_fetch()

    def on_update(self, hdr: gp.Update, records: np.ndarray) -> list[BarUpdate]:
        if self.state != "live":
            if len(self.buffered) >= BUFFER_MAX:
                self.buffered.clear()
                self.overflowed = True
            elif not self.overflowed:
                self.buffered.append((hdr, records.copy()))
            return []
        if hdr.epoch != self.epoch:
            log.warning("%s: gateway epoch changed (store rebuilt); starting over", self.topic)
            self.epoch = ""  # a fresh snapshot, yielded as a "reset" of what the consumer holds
            self.state = "init"
            return []
        expected = (self.chunk_seq if self.chunk is not None else self.seq) + 1
        if hdr.seq < expected:
            return []  # covered by the snapshot already applied
        if hdr.seq > expected:
            log.warning(
                "%s: sequence gap: got %d, expected %d (messages dropped); resyncing",
                self.topic,
                hdr.seq,
                expected,
            )
            self.chunk = None
            self.state = "init"
            return []
        if self.chunk is None:
            self.chunk = Delta(hdr.start, records.copy())
        else:
            self.chunk.add(hdr.start, records)
        self.chunk_seq = hdr.seq
        if hdr.start + hdr.count < hdr.end:
            return []  # more of this change follows
        chunk, self.chunk = self.chunk, None
        if chunk.start > self.series.end:
            log.warning(
                "%s: update starts at %d past our end %d; resyncing",
                self.topic,
                chunk.start,
                self.series.end,
            )
            self.state = "init"
            return []
        self.seq = hdr.seq
        return self._apply(chunk.start, chunk.records, "update")

    def on_heartbeat(self, seq: int | None) -> None:
        if self.state != "live" or seq is None:
            return
        last = self.chunk_seq if self.chunk is not None else self.seq
        if seq > last:
            log.warning(
                "%s: heartbeat says seq %d, we applied %d; resyncing", self.topic, seq, last
            )
            self.chunk = None
            self.state = "init"

    def on_missed_heartbeats(self, lost: int) -> None:
        """``lost`` heartbeats never arrived (dropped with whatever else was queued): a seq
        they named may be one we never saw, so a live topic resyncs (the snapshot since
        our seq is exact; it changes nothing when nothing was missed)."""
        if self.state != "live":
            return
        log.warning("%s: %d heartbeats lost; resyncing", self.topic, lost)
        self.chunk = None
        self.state = "init"

    # -- internals ----------------------------------------------------------------------

    def _after_fetch(self) -> list[BarUpdate]:
        self.state = "live"
        if self.overflowed:
            self.overflowed = False
            self.buffered.clear()
            self.state = "init"
            return []
        pending, self.buffered = self.buffered, []
        out: list[BarUpdate] = []
        for hdr, records in pending:
            if self.state != "live":
                break
            out += self.on_update(hdr, records)
        return out

    def _apply(self, start: int, records: np.ndarray, kind: str) -> list[BarUpdate]:
        if start < self.received_from:
            # Below what the consumer was ever given (a conservative resync answer): its
            # view starts at received_from, so the change is clipped there.
            records = records[self.received_from - start :]
            start = self.received_from
        old_end = self.series.end
        first = self.series.replace(start, records)
        new_end = self.series.end
        if first >= new_end and new_end == old_end:
            return []
        if self.closed_end >= first:
            self.closed_end = query.closed_end(self.series.view(first), first)
        if not self.closed_only:
            replaces = max(0, old_end - max(first, self.received_from))
            return [self._item(first, new_end, replaces, kind)]
        ce = self.closed_end
        if first >= self.yielded_closed:
            if ce <= self.yielded_closed:
                return []
            item = self._item(self.yielded_closed, ce, 0, kind)
        else:
            lo = min(first, ce)
            replaces = max(0, self.yielded_closed - max(lo, self.received_from))
            item = self._item(lo, ce, replaces, kind)
        self.yielded_closed = ce
        return [item]

    def _item(self, start: int, stop: int, replaces: int, kind: str) -> BarUpdate:
        lo = max(start, self.series.base)
        return BarUpdate(
            topic=self.topic,
            seq=self.seq,
            start_offset=lo,
            records=self.series.view(lo, max(lo, stop)).copy(),
            replaces=replaces,
            kind=kind,
            epoch=self.epoch,
        )
