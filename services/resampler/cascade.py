"""The resampler's incremental engine: :class:`Cascade`, one (symbol, side), minute by minute.

Contract
--------
``Cascade.update(start, records)`` means "from 1m offset ``start`` on, the 1m store now reads
``records``" and returns, for every timeframe of :attr:`Cascade.timeframes` (the requested ones
and the parents they need, ``resample.plan``), ``(X, R)``: "from offset X, that timeframe's
store now reads R". Applying every returned change gives stores byte-identical to
``resample.resample_all`` over the final 1m series (the key invariant, tested). It reads
history only through the callables it is given (the stores' zero-copy views, *before* the
update is applied); it does no I/O.

Cost: a new minute costs O(number of timeframes): each timeframe re-aggregates only its open
bar from its parent's few bars in that bucket (kept as Python tuples between updates,
:class:`_Open`); a rewind at 1m offset X recomputes, per timeframe, from the bar before the
first bar with ``src_offset + src_count > X`` (binary search on ``src_offset``), reading only
the parent records of the affected buckets, with the same ``resample.build_bars`` the direct
path uses. Under sessions the open 1W/1M bar is re-aggregated from its minutes on each update
(O(minutes in the bucket)), and session matching costs a zoneinfo lookup per update: the
O(timeframes) target is for symbols without sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from barstream.services.resampler.resample import (
    INHERITED_FLAGS,
    M1,
    TimeframeLike,
    build_bars,
    plan,
    watermark_ms,
)
from barstream.shared.alignment import UTC, Alignment, BucketEdges
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.sessions import Sessions, is_session_aligned, session_ids
from barstream.shared.timeframe import Timeframe


@dataclass
class _Open:
    """A timeframe's open (last) bar, kept as the parent records it is built from."""

    n_bars: int  # store length, the open bar included
    q: int  # offset in the parent series of the open bar's first parent record
    start_ms: int
    end_ms: int
    session: int
    parts: list[tuple[Any, ...]]  # parent records from q to the parent's end, as tuples


class _Change:
    """ "From offset ``start`` on, the store now reads ..." as an array or as record tuples
    (the fast path passes tuples between timeframes and makes one array per timeframe)."""

    __slots__ = ("_array", "_rows", "start")

    def __init__(
        self, start: int, array: np.ndarray | None = None, rows: list[tuple[Any, ...]] | None = None
    ) -> None:
        self.start = start
        self._array = array
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows) if self._rows is not None else len(self.array)

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.array(self._rows, dtype=RECORD_DTYPE)
        return self._array

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        if self._rows is None:
            self._rows = self.array.tolist()
        return self._rows


_FAST_MAX: Final = 64  # larger changes take the vectorized path


class Cascade:
    """Incremental resampling of one (symbol, side); see the module docstring.

    ``m1()`` returns the 1m store and ``bars(tf)`` each timeframe's store, as they read
    *before* the update being computed (zero-copy views are fine; they are only sliced near the
    change). The caller applies every returned change after ``update`` returns.
    """

    def __init__(
        self,
        timeframes: Iterable[TimeframeLike],
        alignment: Alignment = UTC,
        sessions: Sessions | None = None,
        *,
        m1: Callable[[], np.ndarray],
        bars: Callable[[Timeframe], np.ndarray],
    ) -> None:
        self.alignment = alignment
        self.sessions = list(sessions) if sessions else None
        self.plan = plan(timeframes, alignment, self.sessions)
        #: Every timeframe kept (requested ones and the parents they need), parents first.
        self.timeframes = list(self.plan)
        index = {tf: i for i, tf in enumerate(self.timeframes)}
        self._steps = [
            (
                tf,
                parent == M1,
                -1 if parent == M1 else index[parent],
                is_session_aligned(tf, self.sessions),
            )
            for tf, parent in self.plan.items()
        ]
        self._m1 = m1
        self._bars = bars
        self._edges = [BucketEdges.of(tf, alignment) for tf in self.timeframes]
        self._open: list[_Open | None] = [None] * len(self.timeframes)
        self.updates = 0
        self.fast_updates = 0

    def __repr__(self) -> str:
        return (
            f"<Cascade {self.alignment.name} tfs={len(self.timeframes)} updates={self.updates} "
            f"fast={self.fast_updates}>"
        )

    def update(self, start: int, records: np.ndarray) -> dict[Timeframe, tuple[int, np.ndarray]]:
        """Apply "from 1m offset ``start`` on, the 1m store now reads ``records``"; returns
        ``{tf: (X, R)}`` for every timeframe of :attr:`timeframes`."""
        m1_old = self._m1()
        if not 0 <= start <= len(m1_old):
            raise ValueError(
                f"1m update from offset {start} beyond the 1m store's end {len(m1_old)}"
            )
        self.updates += 1
        if len(records):
            w: int | None = watermark_ms(records[-1])
        elif start:
            w = watermark_ms(m1_old[start - 1])
        else:
            w = None
        root = _Change(start, array=records)
        root_sid: list[int] | None = None
        if self.sessions and 0 < len(records) <= _FAST_MAX:
            root_sid = session_ids(records["ts_ms"], self.sessions).tolist()
        changes: list[_Change] = []
        for k, (tf, minutes, pk, aligned) in enumerate(self._steps):
            p_change = root if minutes else changes[pk]
            b_old = self._bars(tf)
            if w is None:
                changes.append(_Change(0, array=np.empty(0, RECORD_DTYPE)))
                self._open[k] = None
                continue
            fast = self._fast(k, minutes, aligned, len(b_old), p_change, root_sid, w)
            if fast is None:
                p_old = m1_old if minutes else self._bars(self.timeframes[pk])
                fast = self._slow(k, tf, minutes, b_old, p_old, p_change, start, w)
            changes.append(fast)
        return {tf: (c.start, c.array) for tf, c in zip(self.timeframes, changes, strict=True)}

    # ------------------------------------------------------------------------------------
    def _fast(
        self,
        k: int,
        minutes: bool,
        aligned: bool,
        n_bars: int,
        change: _Change,
        root_sid: list[int] | None,
        w: int,
    ) -> _Change | None:
        """The open bar absorbs every changed parent record: re-aggregate it alone."""
        st = self._open[k]
        if (
            st is None
            or st.n_bars != n_bars
            or change.start < st.q
            or not 0 < len(change) <= _FAST_MAX
        ):
            return None
        rows = change.rows
        if rows[0][0] < st.start_ms:
            return None
        if rows[-1][0] >= st.end_ms:
            return self._roll(k, st, minutes, change, rows, w)
        if minutes and self.sessions:
            assert root_sid is not None
            if aligned and any(s != st.session for s in root_sid):
                return None
            rows = [(*r[:9], s, r[10]) for r, s in zip(rows, root_sid, strict=True)]
        elif aligned and any(r[9] != st.session for r in rows):
            return None
        parts = st.parts
        cut = change.start - st.q
        if cut > len(parts):
            return None
        del parts[cut:]
        parts.extend(rows)
        use = [p for p in parts if p[9]] if (minutes and self.sessions) else parts
        if not use or use[0] is not parts[0]:
            return None  # the bar lost its first minute: rebuild it (the state is reset there)
        self.fast_updates += 1
        return _Change(st.n_bars - 1, rows=[_bar(st, use, minutes, st.end_ms > w)])

    def _roll(
        self,
        k: int,
        st: _Open,
        minutes: bool,
        change: _Change,
        rows: list[tuple[Any, ...]],
        w: int,
    ) -> _Change | None:
        """The open bar closes and one new bar opens (no sessions): the usual new bucket."""
        if self.sessions:
            return None
        beyond = next(i for i, r in enumerate(rows) if r[0] >= st.end_ms)
        cut = change.start - st.q
        if cut > len(st.parts) or cut + beyond == 0:
            return None  # the open bar would vanish: rebuild
        edges = self._edges[k]
        t = np.asarray([rows[beyond][0]], np.int64)
        start_ms, end_ms = int(edges.start(t)[0]), int(edges.end(t)[0])
        if rows[-1][0] >= end_ms:
            return None
        parts = st.parts
        del parts[cut:]
        parts.extend(rows[:beyond])
        closed = _bar(st, parts, minutes, False)
        new = _Open(st.n_bars + 1, change.start + beyond, start_ms, end_ms, 0, list(rows[beyond:]))
        self._open[k] = new
        self.fast_updates += 1
        return _Change(st.n_bars - 1, rows=[closed, _bar(new, new.parts, minutes, end_ms > w)])

    def _slow(
        self,
        k: int,
        tf: Timeframe,
        minutes: bool,
        b_old: np.ndarray,
        p_old: np.ndarray,
        change: _Change,
        start: int,
        w: int,
    ) -> _Change:
        """Recompute from the bar before the first bar reaching past 1m offset ``start``."""
        p_from, p_new = change.start, change.array
        nb = len(b_old)
        j = int(np.searchsorted(b_old["src_offset"], start, side="right"))
        if j and int(b_old["src_offset"][j - 1]) + int(b_old["src_count"][j - 1]) > start:
            j -= 1
        b = max(0, j - 1)
        if b == 0:
            q = 0
        else:
            m0 = int(b_old["src_offset"][b])
            if minutes:
                q = m0
            else:
                q = int(np.searchsorted(p_old["src_offset"][:p_from], m0, side="left"))
                if q == p_from:
                    q = p_from + int(np.searchsorted(p_new["src_offset"], m0, side="left"))
        src = np.concatenate([p_old[q:p_from], p_new]) if q < p_from else p_new[q - p_from :]
        if not len(src):
            self._open[k] = None
            return _Change(min(b, nb), array=np.empty(0, RECORD_DTYPE))
        built = build_bars(src, minutes, tf, self.alignment, self.sessions, q, w)
        self._open[k] = None
        if len(built.bars):
            last = built.bars[-1]
            tail = src[built.last_start :]
            parts = tail.tolist()
            if minutes and self.sessions:
                sid = session_ids(tail["ts_ms"], self.sessions).tolist()
                parts = [(*r[:9], s, r[10]) for r, s in zip(parts, sid, strict=True)]
            self._open[k] = _Open(
                n_bars=b + len(built.bars),
                q=q + built.last_start,
                start_ms=int(last["ts_ms"]),
                end_ms=built.last_end_ms,
                session=int(last["session"]),
                parts=parts,
            )
        return _Change(b, array=built.bars)


# --------------------------------------------------------------------------------------------
# The open bar as a tuple


_ZERO: Final = np.zeros(1, np.intp)


def _bar(
    st: _Open, use: list[tuple[Any, ...]], minutes: bool, provisional: bool
) -> tuple[Any, ...]:
    """The bar record (as a tuple) of the open bucket ``st`` built from its parent records."""
    if minutes:
        src_offset, count = st.q, len(use)
    else:
        src_offset, count = use[0][6], sum(p[7] for p in use)
    flags = 0
    for p in use:
        flags |= p[8]
    flags &= INHERITED_FLAGS
    if provisional:
        flags |= FLAG_PROVISIONAL
    return (
        st.start_ms,
        use[0][1],
        max(p[2] for p in use),
        min(p[3] for p in use),
        use[-1][4],
        _reduceat_sum([p[5] for p in use]),
        src_offset,
        count,
        flags,
        st.session,
        0,
    )


def _reduceat_sum(values: list[float]) -> float:
    """Exactly ``np.add.reduceat(values, [0])[0]`` (the batch path's sum), without numpy for
    short lists: numpy adds the first value to the plain running sum of the rest while fewer
    than 8 remain (pairwise blocks beyond; tests/unit/test_resample.py guards this)."""
    if len(values) <= 8:
        rest = 0.0
        for v in values[1:]:
            rest += v
        return values[0] + rest if len(values) > 1 else values[0]
    return float(np.add.reduceat(np.asarray(values, np.float64), _ZERO)[0])
