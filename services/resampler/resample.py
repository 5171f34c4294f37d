"""The resampler's pure core: 1m records → bars of any timeframe (no I/O, no sockets).

Bars (``shared.record.RECORD_DTYPE``)
-------------------------------------
* ``ts_ms`` = UTC open of the bar's bucket (``shared.alignment``, ``shared.sessions``);
  O = first open, H = max, L = min, C = last close, V = sum; buckets without minutes are not
  emitted (no flat fill).
* ``src_offset`` = offset in the 1m store of the bar's first minute; ``src_count`` = how many 1m
  records the bar covers. ``session`` = session id for session-aligned timeframes, else 0.
* flags: FLAG_REVISED and FLAG_LIVE when any source minute has them; FLAG_PROVISIONAL on the
  last bar while its window is open.

Closure rule (a pure function of the 1m series, so stores are reproducible): the watermark W is
the end of the last 1m record's UTC day if it has FLAG_DAY_END, its ``ts_ms`` if it is
provisional, else ``ts_ms + 60000``. A bar is closed iff its window end ≤ W (any bar followed
by a later bar is closed). Only the last bar of a timeframe can be provisional.

Direct and cascaded
-------------------
:func:`resample` builds one timeframe from the 1m records. :func:`resample_all` builds each
timeframe from a **canonical parent** (:func:`parent_of`): the largest timeframe of the
standard ladder 1m, 5m, 15m, 30m, 1h, 4h, 1d, 1W, 1M, 1Y whose buckets nest in the child's
(every child boundary is a parent boundary, under that alignment, across DST changes and
sessions), else 1m. The parent depends only on (timeframe, alignment, sessions), never on which
other timeframes are configured, so each store is a function of its 1m store alone. OHLC equal
direct resampling from 1m exactly; volumes are sums in cascade order (equal to direct sums
whenever those are exact, e.g. integer volumes). The incremental engine that keeps the same
stores minute by minute is ``cascade.Cascade``; both aggregate with :func:`build_bars`.

Parents (both presets): 5m←1m, 15m←5m, 30m←15m, 1h←30m, 4h←1h, 1d←4h, 1W←1d, 1M←1d, 1Y←1M;
custom ones from the largest nesting ladder timeframe (2h←1h, 8h←4h, 6h←1h, 90m←30m, 7m←1m,
3d←1d, 2W←1W, 3M←1M). With sessions: intraday parents only when every session's origins are
congruent; 1d (one session occurrence) ←4h; 1W, 1M and multi-day ←1m (a session occurrence can
straddle a calendar boundary); 1Y←1M.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np

from barstream.shared.alignment import UTC, Alignment, BucketEdges
from barstream.shared.record import (
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    RECORD_DTYPE,
)
from barstream.shared.sessions import Sessions, bucket_edges, is_session_aligned, session_ids
from barstream.shared.timeframe import DAY_MS, MINUTE_MS, Timeframe, parse_timeframe

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
    return build_bars(m1, True, tf, alignment, sessions, base_offset, watermark_ms(m1[-1])).bars


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
    built: dict[Timeframe, Built] = {}
    for tf, parent in order.items():
        src: np.ndarray | Cols = m1 if parent == M1 else built[parent].cols
        if parent != M1 and not built[parent].cols:
            built[tf] = Built({}, 0, 0)
            continue
        built[tf] = build_bars(src, parent == M1, tf, alignment, sessions, base_offset, w)
    return {tf: b.bars for tf, b in built.items()}


def apply_update(store: np.ndarray, start: int, records: np.ndarray) -> np.ndarray:
    """What a store reads after "from offset ``start`` on, it now reads ``records``"."""
    if not 0 <= start <= len(store):
        raise ValueError(f"update from offset {start} beyond the store's end {len(store)}")
    return np.concatenate([store[:start], records.astype(RECORD_DTYPE, copy=False)])


# --------------------------------------------------------------------------------------------
# Aggregation (shared with cascade.Cascade)


Cols = dict[str, np.ndarray]
_BLOCK: Final = 1 << 13  # records assembled per block (512 KiB)
_OUT_FIELDS: Final = (
    "ts_ms", "open", "high", "low", "close", "volume", "src_offset", "src_count", "flags", "session"
)  # fmt: skip


@dataclass
class Built:
    """Bars of one timeframe from :func:`build_bars`, and where the last (open) one starts."""

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


def build_bars(
    src: np.ndarray | Cols,
    minutes: bool,
    tf: Timeframe,
    alignment: Alignment,
    sessions: Sessions | None,
    base_offset: int,
    w: int,
) -> Built:
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
        return Built({}, 0, 0)
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
    return Built(out, last_start, last_end)


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
