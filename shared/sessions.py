"""Trading sessions: which minutes form a bar when an instrument has trading hours.

Contract
--------
A symbol may have an ordered list of :class:`Session` (local time range in its own timezone,
possibly wrapping midnight; weekdays and an optional date window that apply to the date the
occurrence *starts*; a per-timeframe origin). A minute belongs to the first session that
matches it; its id is the 1-based index in the list (record byte ``session``; 0 = none).

With sessions configured:

* minute and hour timeframes and ``1d`` are **session-aligned**: a bar never crosses a session
  occurrence; intraday bars sit on a grid anchored at the session's origin for that
  timeframe (default: the session start) and are clipped to the occurrence; a ``1d`` bar is one
  whole session occurrence. Their records carry the session id.
* weeks, months, years and multi-day timeframes are calendar bars of the alignment (session 0).
* Sessions of one symbol should not overlap; where they do, the first listed wins the minute
  and the later one's bar is split where it is interrupted.
* **Minutes that match no session are excluded from every timeframe.** They lie outside the
  trading hours configured for the instrument (pre-market indications, maintenance quotes);
  keeping them only in calendar timeframes would make a week disagree with its days, and
  giving them bars of their own would mix two products in one store.

:func:`bucket_edges` is the one entry point that applies all of this (with no sessions it is
the alignment's edges, ``shared.alignment``); :func:`sessions_of` turns the config's
``resampler.sessions.SYMBOL`` entries into :class:`Session` values.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from barstream.shared.alignment import (
    UTC,
    Alignment,
    BucketEdges,
    offset_segments,
    utc_offset_ms,
    weekday,
)
from barstream.shared.errors import ConfigError
from barstream.shared.timeframe import DAY_MS, Timeframe, parse_timeframe, time_of_day_ms

if TYPE_CHECKING:
    from barstream.shared.config import SessionConfig

_I64 = np.int64


@dataclass(frozen=True)
class Session:
    """A trading session in local time of ``tz``: ``start`` ≤ t < ``end`` (``end`` ≤ ``start``
    wraps midnight: the occurrence starting on date D ends on D+1). ``weekdays`` (0 = Monday)
    and ``valid_from``/``valid_to`` (inclusive, the configuration's keys) apply to the date an occurrence starts.
    ``origins`` maps a timeframe ("1h") to the local time its grid is anchored at (default:
    ``start``)."""

    name: str
    tz: str
    start: dt.time
    end: dt.time
    weekdays: frozenset[int] = frozenset(range(5))
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None
    origins: tuple[tuple[str, dt.time], ...] = field(default=())

    def __post_init__(self) -> None:
        key = f"sessions.{self.name}"
        try:
            ZoneInfo(self.tz)
        except Exception as exc:
            raise ConfigError(f"{key}.tz", self.tz, f"unknown timezone: {exc}") from exc
        if self.start == self.end:
            raise ConfigError(f"{key}.end", self.end, "a session cannot be empty or 24 h")
        if not self.weekdays or not set(self.weekdays) <= set(range(7)):
            raise ConfigError(f"{key}.weekdays", sorted(self.weekdays), "weekdays are 0..6")
        for tf, _ in self.origins:
            if not Timeframe.parse(tf).is_intraday:
                raise ConfigError(f"{key}.origins", tf, "origins apply to m/h timeframes")

    @property
    def wraps(self) -> bool:
        return self.end < self.start

    def origin_ms(self, tf: Timeframe) -> int:
        """Local time of day (ms) the grid of ``tf`` is anchored at in this session."""
        for name, at in self.origins:
            if Timeframe.parse(name) == tf:
                return time_of_day_ms(at)
        return time_of_day_ms(self.start)


Sessions = Sequence[Session]


def is_session_aligned(tf: Timeframe, sessions: Sessions | None) -> bool:
    """Whether bars of ``tf`` follow sessions (m/h timeframes and 1d, when sessions exist)."""
    return bool(sessions) and (tf.is_intraday or (tf.unit == "d" and tf.count == 1))


def sessions_of(configs: Sequence[SessionConfig]) -> list[Session]:
    """Config sessions (``resampler.sessions.SYMBOL``) → Sessions (validated by both)."""

    def hhmm(text: str) -> dt.time:
        h, m = text.split(":")
        return dt.time(int(h), int(m))

    return [
        Session(
            name=c.name,
            tz=c.timezone,
            start=hhmm(c.start),
            end=hhmm(c.end),
            weekdays=frozenset(c.weekdays),
            valid_from=c.valid_from,
            valid_to=c.valid_to,
            origins=tuple((tf, hhmm(at)) for tf, at in sorted(c.origins.items())),
        )
        for c in configs
    ]


def session_ids(ts_ms: np.ndarray, sessions: Sessions) -> np.ndarray:
    """1-based id of the first matching session per time (0 = none), as uint8."""
    return _match_sessions(np.asarray(ts_ms, _I64), sessions)[0]


def bucket_edges(
    ts_ms: np.ndarray,
    tf: Timeframe | str,
    alignment: Alignment = UTC,
    sessions: Sessions | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start_ms, end_ms, session id) of the bar containing each time, sessions included.

    Without sessions the id is 0 everywhere. With sessions, times matching no session get
    start = end = -1 and id 0 (they belong to no bar, see the module docstring); calendar
    timeframes get their alignment edges and id 0 for in-session times.
    """
    tf = parse_timeframe(tf)
    ts = np.asarray(ts_ms, _I64)
    if not sessions:
        edges = BucketEdges.of(tf, alignment)
        return edges.start(ts), edges.end(ts), np.zeros(len(ts), np.uint8)
    sid, occ_start, occ_end = _match_sessions(ts, sessions)
    start = np.full(len(ts), -1, _I64)
    end = np.full(len(ts), -1, _I64)
    out_sid = np.zeros(len(ts), np.uint8)
    if not is_session_aligned(tf, sessions):
        inside = sid > 0
        edges = BucketEdges.of(tf, alignment)
        start[inside] = edges.start(ts[inside])
        end[inside] = edges.end(ts[inside])
        return start, end, out_sid
    for k, session in enumerate(sessions, start=1):
        sel = np.flatnonzero(sid == k)
        if not len(sel):
            continue
        out_sid[sel] = k
        if not tf.is_intraday:  # 1d: the whole occurrence
            start[sel] = occ_start[sel]
            end[sel] = occ_end[sel]
            continue
        assert tf.interval_ms is not None
        edges = BucketEdges.grid(session.tz, tf.interval_ms, session.origin_ms(tf))
        sub = ts[sel]
        start[sel] = np.maximum(edges.start(sub), occ_start[sel])
        end[sel] = np.minimum(edges.end(sub), occ_end[sel])
    return start, end, out_sid


def _local_to_utc(tz: str, local_ms: int) -> int:
    """First instant at which the local clock of ``tz`` reads ``local_ms`` or later."""
    cuts, offs = offset_segments(tz, local_ms - 2 * DAY_MS, local_ms + 2 * DAY_MS)
    hits = [local_ms - off for off in set(offs) if utc_offset_ms(tz, local_ms - off) == off]
    if hits:
        return min(hits)
    for t, before, after in zip(cuts, offs, offs[1:], strict=False):
        if t + before <= local_ms < t + after:  # the clock jumps over local_ms at t
            return t
    raise AssertionError(f"{tz}: local time {local_ms} has no UTC instant")


def _match_sessions(
    ts: np.ndarray, sessions: Sessions
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(session id, occurrence start ms, occurrence end ms) per time; 0/-1/-1 when none."""
    n = len(ts)
    sid = np.zeros(n, np.uint8)
    occ_start = np.full(n, -1, _I64)
    occ_end = np.full(n, -1, _I64)
    if not n:
        return sid, occ_start, occ_end
    if len(sessions) > 255:
        raise ConfigError("sessions", len(sessions), "at most 255 sessions per symbol")
    for k, s in enumerate(sessions, start=1):
        free = np.flatnonzero(sid == 0)
        if not len(free):
            break
        sub = ts[free]
        local = sub + _offsets_of(s.tz, sub)
        day = local // DAY_MS
        tod = local - day * DAY_MS
        a, b = time_of_day_ms(s.start), time_of_day_ms(s.end)
        if s.wraps:
            inside = (tod >= a) | (tod < b)
            occ_day = np.where(tod >= a, day, day - 1)
        else:
            inside = (tod >= a) & (tod < b)
            occ_day = day
        mask = np.zeros(7, bool)
        mask[list(s.weekdays)] = True
        inside &= mask[weekday(occ_day)]
        if s.valid_from is not None:
            inside &= occ_day >= _day_number(s.valid_from)
        if s.valid_to is not None:
            inside &= occ_day <= _day_number(s.valid_to)
        hit = free[inside]
        if not len(hit):
            continue
        days = occ_day[inside]
        uniq, inverse = np.unique(days, return_inverse=True)
        starts = np.asarray([_local_to_utc(s.tz, int(d) * DAY_MS + a) for d in uniq], _I64)
        extra = DAY_MS if s.wraps else 0
        ends = np.asarray([_local_to_utc(s.tz, int(d) * DAY_MS + b + extra) for d in uniq], _I64)
        sid[hit] = k
        occ_start[hit] = starts[inverse]
        occ_end[hit] = ends[inverse]
    return sid, occ_start, occ_end


def _offsets_of(tz: str, ts: np.ndarray) -> np.ndarray:
    """UTC offset (ms) of ``tz`` at each time."""
    if tz in ("UTC", "Etc/UTC"):
        return np.zeros(len(ts), _I64)
    cuts, offs = offset_segments(tz, int(ts.min()), int(ts.max()))
    if not cuts:
        return np.full(len(ts), offs[0], _I64)
    return np.asarray(offs, _I64)[np.searchsorted(np.asarray(cuts, _I64), ts, side="right")]


def _day_number(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days
