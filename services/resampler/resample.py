"""The resampler's pure core: 1m records → bars of any timeframe (no I/O, no sockets).

Bars (``shared.record.RECORD_DTYPE``)
-------------------------------------
* ``ts_ms`` = UTC open of the bar's bucket (``shared.timeframe``); O = first open, H = max,
  L = min, C = last close, V = sum; buckets without minutes are not emitted (no flat fill).
* ``src_offset`` = offset in the 1m store of the bar's first minute; ``src_count`` = how many 1m
  records the bar covers. ``session`` = session id for session-aligned timeframes, else 0.
* flags: FLAG_REVISED and FLAG_LIVE when any source minute has them; FLAG_PROVISIONAL on the
  last bar while its window is open.

Closure rule (a pure function of the 1m series, so stores are reproducible): the watermark W is
the end of the last 1m record's UTC day if it has FLAG_DAY_END, its ``ts_ms`` if it is
provisional, else ``ts_ms + 60000``. A bar is closed iff its window end ≤ W (any bar followed
by a later bar is closed). Only the last bar of a timeframe can be provisional.

Cascade
-------
:func:`resample_all` builds each timeframe from a **canonical parent** (:func:`parent_of`):
the largest timeframe of the standard ladder 1m, 5m, 15m, 30m, 1h, 4h, 1d, 1W, 1M, 1Y whose
buckets nest in the child's (every child boundary is a parent boundary, under that alignment,
across DST changes and sessions), else 1m. The parent depends only on (timeframe, alignment,
sessions), never on which other timeframes are configured, so each store is a function of its
1m store alone. OHLC equal direct resampling from 1m exactly; volumes are sums in cascade order
(equal to direct sums whenever those are exact, e.g. integer volumes).

:class:`Cascade` is the incremental engine for one (symbol, side). ``update(start, records)``
means "from 1m offset ``start`` on, the 1m store now reads ``records``" and returns, for every
timeframe of :attr:`Cascade.timeframes`, ``(X, R)``: "from offset X, that timeframe's store now
reads R". Applying every returned change gives stores byte-identical to :func:`resample_all`
over the final 1m series (the key invariant, tested). It reads history only through the
callables it is given (the stores' zero-copy views, *before* the update is applied). A new
minute costs O(number of timeframes): each timeframe re-aggregates only its open bar from its
parent's few bars in that bucket (kept as Python tuples between updates); a rewind at 1m
offset X recomputes, per timeframe, from the bar before the first bar with
``src_offset + src_count > X`` (binary search on ``src_offset``), reading only the parent
records of the affected buckets.

Parents (both presets): 5m←1m, 15m←5m, 30m←15m, 1h←30m, 4h←1h, 1d←4h, 1W←1d, 1M←1d, 1Y←1M;
custom ones from the largest nesting ladder timeframe (2h←1h, 8h←4h, 6h←1h, 90m←30m, 7m←1m,
3d←1d, 2W←1W, 3M←1M). With sessions: intraday parents only when every session's origins are
congruent; 1d (one session occurrence) ←4h; 1W, 1M and multi-day ←1m (a session occurrence can
straddle a calendar boundary); 1Y←1M. Under sessions the open 1W/1M bar is re-aggregated from
its minutes on each update (O(minutes in the bucket)), and session matching costs a zoneinfo
lookup per update: the O(timeframes) target is for symbols without sessions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from barstream.shared.record import (
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    RECORD_DTYPE,
)
from barstream.shared.timeframe import (
    DAY_MS,
    MINUTE_MS,
    UTC,
    Alignment,
    BucketEdges,
    Sessions,
    Timeframe,
    bucket_edges,
    is_session_aligned,
    parse_timeframe,
    session_ids,
)

M1: Final = Timeframe(1, "m")
#: The canonical ladder parents are chosen from.
LADDER: Final = tuple(
    Timeframe.parse(t) for t in ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y")
)
#: Flags a bar inherits from its minutes.
INHERITED_FLAGS: Final = FLAG_REVISED | FLAG_LIVE

TimeframeLike = Timeframe | str


# --------------------------------------------------------------------------------------------
# Public API


def watermark_ms(last: np.void | np.ndarray) -> int:
    """The closure watermark W of a 1m series whose last record is ``last``."""
    ts = int(last["ts_ms"])
    flags = int(last["flags"])
    if flags & FLAG_DAY_END:
        return (ts // DAY_MS + 1) * DAY_MS
    if flags & FLAG_PROVISIONAL:
        return ts
    return ts + MINUTE_MS


def parent_of(
    tf: TimeframeLike, alignment: Alignment = UTC, sessions: Sessions | None = None
) -> Timeframe:
    """The canonical parent of ``tf``: the largest ladder timeframe nesting in it, else 1m."""
    tf = parse_timeframe(tf)
    if tf == M1:
        raise ValueError("1m is the source; it has no parent")
    for cand in sorted((p for p in LADDER if p.sort_key < tf.sort_key), key=lambda p: p.sort_key)[
        ::-1
    ]:
        if _nests(tf, cand, sessions):
            return cand
    return M1


def plan(
    timeframes: Iterable[TimeframeLike],
    alignment: Alignment = UTC,
    sessions: Sessions | None = None,
) -> dict[Timeframe, Timeframe]:
    """{timeframe: parent} for ``timeframes`` and every parent they need (1m excluded), in an
    order where parents come first."""
    out: dict[Timeframe, Timeframe] = {}

    def add(tf: Timeframe) -> None:
        if tf == M1 or tf in out:
            return
        parent = parent_of(tf, alignment, sessions)
        add(parent)
        out[tf] = parent

    for tf in sorted({parse_timeframe(t) for t in timeframes}, key=lambda t: t.sort_key):
        add(tf)
    return out


def resample(
    m1: np.ndarray,
    tf: TimeframeLike,
    alignment: Alignment = UTC,
    sessions: Sessions | None = None,
    base_offset: int = 0,
) -> np.ndarray:
    """Bars of ``tf`` built directly from the 1m records ``m1`` (``m1[0]`` sits at 1m offset
    ``base_offset``). The last bar's closure uses the watermark of ``m1[-1]``."""
    tf = parse_timeframe(tf)
    if not len(m1):
        return np.empty(0, RECORD_DTYPE)
    return _build(m1, True, tf, alignment, sessions, base_offset, watermark_ms(m1[-1])).bars


def resample_all(
    m1: np.ndarray,
    timeframes: Iterable[TimeframeLike],
    alignment: Alignment = UTC,
    sessions: Sessions | None = None,
    base_offset: int = 0,
) -> dict[Timeframe, np.ndarray]:
    """Every timeframe of ``timeframes`` (and the parents they need) through the cascade."""
    order = plan(timeframes, alignment, sessions)
    if not len(m1):
        return {tf: np.empty(0, RECORD_DTYPE) for tf in order}
    w = watermark_ms(m1[-1])
    built: dict[Timeframe, _Built] = {}
    for tf, parent in order.items():
        src: np.ndarray | Cols = m1 if parent == M1 else built[parent].cols
        if parent != M1 and not built[parent].cols:
            built[tf] = _Built({}, 0, 0)
            continue
        built[tf] = _build(src, parent == M1, tf, alignment, sessions, base_offset, w)
    return {tf: b.bars for tf, b in built.items()}


def apply_update(store: np.ndarray, start: int, records: np.ndarray) -> np.ndarray:
    """What a store reads after "from offset ``start`` on, it now reads ``records``"."""
    if not 0 <= start <= len(store):
        raise ValueError(f"update from offset {start} beyond the store's end {len(store)}")
    return np.concatenate([store[:start], records.astype(RECORD_DTYPE, copy=False)])


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
        built = _build(src, minutes, tf, self.alignment, self.sessions, q, w)
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
# Core


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


Cols = dict[str, np.ndarray]
_BLOCK: Final = 1 << 13  # records assembled per block (512 KiB)
_OUT_FIELDS: Final = (
    "ts_ms", "open", "high", "low", "close", "volume", "src_offset", "src_count", "flags", "session"
)  # fmt: skip


@dataclass
class _Built:
    cols: Cols  # contiguous columns: a child timeframe reads these, not 64-byte-stride fields
    last_start: int  # position in the source of the last bar's first record
    last_end_ms: int  # window end of the last bar
    _bars: np.ndarray | None = None

    @property
    def bars(self) -> np.ndarray:
        if self._bars is None:
            n = len(self.cols["ts_ms"]) if self.cols else 0
            out = np.empty(n, RECORD_DTYPE)
            missing = [f for f in RECORD_DTYPE.names or () if f not in self.cols]
            # block by block: each block's cache lines are written once for all its fields
            for a in range(0, n, _BLOCK):
                block = out[a : a + _BLOCK]
                for name, col in self.cols.items():
                    block[name] = col[a : a + _BLOCK]
                for name in missing:
                    block[name] = 0
            self._bars = out
        return self._bars


def _build(
    src: np.ndarray | Cols,
    minutes: bool,
    tf: Timeframe,
    alignment: Alignment,
    sessions: Sessions | None,
    base_offset: int,
    w: int,
) -> _Built:
    """Aggregate ``src`` (1m records when ``minutes``, else parent bars; a record array or
    columns) into bars of ``tf``."""
    c: Cols = src if isinstance(src, dict) else {f: src[f] for f in _OUT_FIELDS}
    ts = c["ts_ms"]
    keep: np.ndarray | None = None
    sid: np.ndarray | None = None
    aligned = is_session_aligned(tf, sessions)
    if sessions and minutes:
        sid_all = session_ids(ts, sessions)
        if not bool(np.all(sid_all)):
            keep = np.flatnonzero(sid_all)
            c = {f: v[keep] for f, v in c.items()}
            ts = c["ts_ms"]
            sid_all = sid_all[keep]
        if aligned:
            sid = sid_all
    n = len(ts)
    if not n:
        return _Built({}, 0, 0)
    interval = tf.interval_ms
    grid_only = (
        not aligned
        and alignment.tz in ("UTC", "Etc/UTC")
        and tf.is_intraday
        and interval is not None
        and DAY_MS % interval == 0
    )
    edges: BucketEdges | None = None
    ends: np.ndarray | None = None
    if grid_only:  # a fixed grid on a UTC clock: one division gives the keys
        assert interval is not None
        shift = alignment.clock_shift_ms
        starts = (ts + shift) // interval if shift else ts // interval  # keys, compared only
        edges = BucketEdges.of(tf, alignment)
    elif aligned:
        starts, ends, sid = bucket_edges(ts, tf, alignment, sessions)
    else:
        edges = BucketEdges.of(tf, alignment)
        starts = edges.start(np.asarray(ts, np.int64), ascending=True)
    change = starts[1:] != starts[:-1]
    if sid is not None:
        change |= sid[1:] != sid[:-1]
    idx = np.empty(int(np.count_nonzero(change)) + 1, np.intp)
    idx[0] = 0
    idx[1:] = np.flatnonzero(change) + 1
    last_of = np.empty_like(idx)
    last_of[:-1] = idx[1:] - 1
    last_of[-1] = n - 1
    out: Cols = {}
    if grid_only:
        assert interval is not None
        out["ts_ms"] = starts[idx] * interval - alignment.clock_shift_ms
    else:
        out["ts_ms"] = starts[idx]
    out["open"] = c["open"][idx]
    out["high"] = np.maximum.reduceat(c["high"], idx)
    out["low"] = np.minimum.reduceat(c["low"], idx)
    out["close"] = c["close"][last_of]
    out["volume"] = np.add.reduceat(c["volume"], idx)
    if minutes:
        first = idx if keep is None else keep[idx]
        out["src_offset"] = first + base_offset
        out["src_count"] = last_of - idx + 1
    else:
        out["src_offset"] = c["src_offset"][idx]
        out["src_count"] = np.add.reduceat(c["src_count"], idx, dtype=np.int64)
    out["flags"] = np.bitwise_or.reduceat(c["flags"], idx) & INHERITED_FLAGS
    if sid is not None:
        out["session"] = sid[idx]
    if ends is not None:
        last_end = int(ends[-1])
    else:
        assert edges is not None
        last_end = int(edges.end(np.asarray(ts[-1:], np.int64))[0])
    if last_end > w:
        out["flags"][-1] |= FLAG_PROVISIONAL
    last_start = int(idx[-1]) if keep is None else int(keep[idx[-1]])
    return _Built(out, last_start, last_end)


def _nests(child: Timeframe, parent: Timeframe, sessions: Sessions | None) -> bool:
    """Whether every bucket of ``child`` is a union of whole buckets of ``parent``."""
    if parent == M1:
        return True
    pi = parent.interval_ms
    if parent.is_intraday:
        assert pi is not None
        if DAY_MS % pi:
            return False  # grids restarting at midnight only nest when they divide the day
        if child.is_intraday:
            ci = child.interval_ms
            assert ci is not None
            if ci % pi:
                return False
            return not sessions or all(
                (s.origin_ms(child) - s.origin_ms(parent)) % pi == 0 for s in sessions
            )
        if sessions:
            return child == Timeframe(1, "d")  # a session day is a whole occurrence
        return True  # calendar boundaries are clock midnights, on every dividing grid
    if sessions and is_session_aligned(parent, sessions):
        return False  # session days do not nest in calendar weeks/months
    if parent.unit == "d":
        return child.unit in ("d", "W", "M", "Y")
    if parent.unit == "W":
        return child.unit == "W" and child.count % parent.count == 0
    if parent.unit == "M":
        return child.unit in ("M", "Y")
    if parent.unit == "Y":
        return child.unit == "Y"
    return False
