"""Timeframes ("5m", "4h", "1d", "1W", "1M"), alignments and sessions: which minutes form a bar.

Contract
--------
* Stored times are UTC ms of the bar open. An :class:`Alignment` only decides *which* minutes
  form a bar; it never shifts stored times.
* An alignment has a **clock**: the local wall clock of an IANA timezone (``zoneinfo``) plus
  ``clock_shift_ms``. The clock's midnight is the alignment's origin: intraday bars (< 1 day)
  sit on a grid of the clock anchored at its midnight; days, weeks (starting on ``week_start``),
  months and years are calendar units of the clock.

  * ``UTC``: the UTC clock (Dukascopy's own candles); weeks start Monday 00:00 UTC.
  * ``MT4``: broker server time = America/New_York + 7 h (GMT+2, GMT+3 while New York observes
    DST): days start at 17:00 New York. ``fold_weekend``: the clock's Saturday and Sunday join
    Friday's bar (five daily bars a week, never a Sunday bar; the Sunday-evening FX open is
    already server Monday 00:00); weekly, monthly and yearly bars start at the first
    Monday-to-Friday server midnight on or after their calendar start.

* DST: a bar boundary is an instant at which the clock *reads* a grid time, or *jumps over*
  one (spring forward: the 1h bar starting at 01:00 local ends at the jump; at fall back the
  repeated 02:00 starts a second 1h bar, while a 4h bar spans five real hours). Offsets come
  from ``zoneinfo`` for the data's range and are applied per constant-offset segment
  (vectorized); there are no fixed-offset tables.
* Intraday grids restart at every clock midnight (or session origin), so an interval that does
  not divide a day ends the day with a shorter bar.

Sessions
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
"""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from barstream.shared.errors import ConfigError

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
WEEK_MS: Final = 7 * DAY_MS

#: Units in parse order: minutes, hours, days, weeks, months, years.
UNITS: Final = ("m", "h", "d", "W", "M", "Y")
_UNIT_MS: Final = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "W": WEEK_MS}
_TF_RE: Final = re.compile(r"^([1-9][0-9]*)([mhdWMY])$")
_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)
_I64 = np.int64


def _time_ms(t: dt.time) -> int:
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000


@dataclass(frozen=True)
class Timeframe:
    """A bar length: ``count`` × ``unit`` (``m`` minute, ``h`` hour, ``d`` day, ``W`` week,
    ``M`` month, ``Y`` year). Minute and hour timeframes must be shorter than a day."""

    count: int
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.count < 1:
            raise ConfigError("timeframe", f"{self.count}{self.unit}", "not a valid timeframe")
        if self.unit in "mh" and self.count * _UNIT_MS[self.unit] >= DAY_MS:
            raise ConfigError(
                "timeframe", str(self), "minute/hour timeframes must be shorter than 1d"
            )

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        """``"15m"`` → ``Timeframe(15, "m")``; raises ConfigError naming the text."""
        m = _TF_RE.match(text.strip())
        if m is None:
            raise ConfigError("timeframe", text, "expected N followed by one of m h d W M Y")
        return cls(int(m.group(1)), m.group(2))

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    @property
    def interval_ms(self) -> int | None:
        """Nominal length for m/h/d/W (a DST day is still "1d"); None for months and years."""
        unit_ms = _UNIT_MS.get(self.unit)
        return None if unit_ms is None else self.count * unit_ms

    @property
    def is_intraday(self) -> bool:
        return self.unit in "mh"

    @property
    def sort_key(self) -> tuple[int, int]:
        """Orders timeframes from shortest to longest ("90m" before "2h")."""
        if self.is_intraday:
            assert self.interval_ms is not None
            return (0, self.interval_ms)
        return (UNITS.index(self.unit) - 1, self.count)


def parse_timeframe(tf: Timeframe | str) -> Timeframe:
    return tf if isinstance(tf, Timeframe) else Timeframe.parse(tf)


@dataclass(frozen=True)
class Alignment:
    """Which clock bars follow: ``tz`` local time + ``clock_shift_ms``; the clock's midnight is
    the day origin (``day_start`` gives it as a local time of day); weeks start on
    ``week_start`` (0 = Monday) of the clock; ``fold_weekend`` merges the clock's Saturday and
    Sunday into Friday's daily bar."""

    name: str
    tz: str = "UTC"
    clock_shift_ms: int = 0
    week_start: int = 0
    fold_weekend: bool = False

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.tz)
        except Exception as exc:
            raise ConfigError(
                f"alignment.{self.name}.tz", self.tz, f"unknown timezone: {exc}"
            ) from exc
        if not 0 <= self.week_start <= 6:
            raise ConfigError(f"alignment.{self.name}.week_start", self.week_start, "0..6")
        if not -DAY_MS < self.clock_shift_ms < DAY_MS:
            raise ConfigError(
                f"alignment.{self.name}.clock_shift_ms", self.clock_shift_ms, "within ±1 day"
            )

    @classmethod
    def with_day_start(
        cls,
        name: str,
        tz: str,
        day_start: dt.time,
        *,
        week_start: int = 0,
        fold_weekend: bool = False,
    ) -> Alignment:
        """Days start at ``day_start`` local time; a start after noon opens the *next* date
        (17:00 New York opens the next server day, as in MT4)."""
        tod_ms = _time_ms(day_start)
        shift = DAY_MS - tod_ms if tod_ms > DAY_MS // 2 else -tod_ms
        return cls(name, tz, shift, week_start, fold_weekend)

    @property
    def day_start_ms(self) -> int:
        """Local time of day (ms) at which the alignment's days start."""
        return (-self.clock_shift_ms) % DAY_MS


UTC: Final = Alignment("utc")
MT4: Final = Alignment.with_day_start(
    "mt4", "America/New_York", dt.time(17, 0), week_start=0, fold_weekend=True
)
PRESETS: Final = {"utc": UTC, "mt4": MT4}


@dataclass(frozen=True)
class Session:
    """A trading session in local time of ``tz``: ``start`` ≤ t < ``end`` (``end`` ≤ ``start``
    wraps midnight: the occurrence starting on date D ends on D+1). ``weekdays`` (0 = Monday)
    and ``first_day``/``last_day`` (inclusive) apply to the date an occurrence starts.
    ``origins`` maps a timeframe ("1h") to the local time its grid is anchored at (default:
    ``start``)."""

    name: str
    tz: str
    start: dt.time
    end: dt.time
    weekdays: frozenset[int] = frozenset(range(5))
    first_day: dt.date | None = None
    last_day: dt.date | None = None
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
                return _time_ms(at)
        return _time_ms(self.start)


Sessions = Sequence[Session]


def is_session_aligned(tf: Timeframe, sessions: Sessions | None) -> bool:
    """Whether bars of ``tf`` follow sessions (m/h timeframes and 1d, when sessions exist)."""
    return bool(sessions) and (tf.is_intraday or (tf.unit == "d" and tf.count == 1))


# --------------------------------------------------------------------------------------------
# Public vectorized edges


def bucket_start_ms(
    ts_ms: np.ndarray, tf: Timeframe | str, alignment: Alignment = UTC
) -> np.ndarray:
    """UTC ms of the open of the bar containing each time (alignment clock, no sessions)."""
    tf = parse_timeframe(tf)
    return BucketEdges(_clock_of(alignment), _keys_for(tf, alignment)).start(_as_i64(ts_ms))


def bucket_end_ms(ts_ms: np.ndarray, tf: Timeframe | str, alignment: Alignment = UTC) -> np.ndarray:
    """UTC ms at which the bar containing each time ends (the next bar's open)."""
    tf = parse_timeframe(tf)
    return BucketEdges(_clock_of(alignment), _keys_for(tf, alignment)).end(_as_i64(ts_ms))


def session_ids(ts_ms: np.ndarray, sessions: Sessions) -> np.ndarray:
    """1-based id of the first matching session per time (0 = none), as uint8."""
    return _match_sessions(_as_i64(ts_ms), sessions)[0]


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
    ts = _as_i64(ts_ms)
    if not sessions:
        edges = BucketEdges(_clock_of(alignment), _keys_for(tf, alignment))
        return edges.start(ts), edges.end(ts), np.zeros(len(ts), np.uint8)
    sid, occ_start, occ_end = _match_sessions(ts, sessions)
    start = np.full(len(ts), -1, _I64)
    end = np.full(len(ts), -1, _I64)
    out_sid = np.zeros(len(ts), np.uint8)
    if not is_session_aligned(tf, sessions):
        inside = sid > 0
        edges = BucketEdges(_clock_of(alignment), _keys_for(tf, alignment))
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
        edges = BucketEdges(
            _Clock(session.tz, 0), _grid_keys(tf.interval_ms, session.origin_ms(tf))
        )
        sub = ts[sel]
        start[sel] = np.maximum(edges.start(sub), occ_start[sel])
        end[sel] = np.minimum(edges.end(sub), occ_end[sel])
    return start, end, out_sid


# --------------------------------------------------------------------------------------------
# Clocks and keys


@dataclass(frozen=True)
class _Clock:
    tz: str
    shift_ms: int


def _clock_of(alignment: Alignment) -> _Clock:
    return _Clock(alignment.tz, alignment.clock_shift_ms)


@dataclass(frozen=True)
class _Keys:
    """Floor a clock reading to its bucket's clock start, and step to the next bucket."""

    floor: Callable[[np.ndarray], np.ndarray]
    next: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (clock, floor) -> next floor
    span_ms: int  # an upper bound of one bucket's length


def _keys_for(tf: Timeframe, alignment: Alignment) -> _Keys:
    if tf.is_intraday:
        assert tf.interval_ms is not None
        return _grid_keys(tf.interval_ms, 0)
    return _calendar_keys(tf, alignment.week_start, alignment.fold_weekend)


@functools.lru_cache(maxsize=256)
def _grid_keys(interval_ms: int, anchor_ms: int) -> _Keys:
    anchor = anchor_ms % DAY_MS
    if DAY_MS % interval_ms == 0:
        phase = anchor % interval_ms

        def floor(clock: np.ndarray) -> np.ndarray:
            if phase:
                return np.asarray(clock - (clock - phase) % interval_ms)
            return np.asarray(clock - clock % interval_ms)

        def next_(clock: np.ndarray, start: np.ndarray) -> np.ndarray:
            return np.asarray(start + interval_ms)

        return _Keys(floor, next_, interval_ms)

    def floor_r(clock: np.ndarray) -> np.ndarray:
        rel = (clock - anchor) % DAY_MS
        return np.asarray(clock - rel % interval_ms)

    def next_r(clock: np.ndarray, start: np.ndarray) -> np.ndarray:
        day_anchor = clock - (clock - anchor) % DAY_MS + DAY_MS
        return np.asarray(np.minimum(start + interval_ms, day_anchor))

    return _Keys(floor_r, next_r, interval_ms)


def _weekday(day: np.ndarray) -> np.ndarray:
    return (day + _EPOCH_WEEKDAY) % 7


def _fold_back(day: np.ndarray) -> np.ndarray:
    """Saturday and Sunday → the Friday before."""
    wd = _weekday(day)
    return day - np.where(wd == 5, 1, np.where(wd == 6, 2, 0))


def _fold_forward(day: np.ndarray) -> np.ndarray:
    """Saturday and Sunday → the Monday after."""
    wd = _weekday(day)
    return day + np.where(wd == 5, 2, np.where(wd == 6, 1, 0))


@functools.lru_cache(maxsize=256)
def _calendar_keys(tf: Timeframe, week_start: int, fold: bool) -> _Keys:
    n = tf.count

    def trading_day(clock: np.ndarray) -> np.ndarray:
        day = clock // DAY_MS
        return _fold_back(day) if fold else day

    def finish(day: np.ndarray) -> np.ndarray:
        return (_fold_forward(day) if fold else day) * DAY_MS

    if tf.unit == "d":

        def floor_d(clock: np.ndarray) -> np.ndarray:
            day = trading_day(clock)
            return finish(day - day % n if n > 1 else day)

        def next_d(clock: np.ndarray, start: np.ndarray) -> np.ndarray:
            day = trading_day(clock)
            return finish((day - day % n if n > 1 else day) + n)

        return _Keys(floor_d, next_d, (n + 3) * DAY_MS)
    if tf.unit == "W":
        ref = (week_start - _EPOCH_WEEKDAY) % 7  # a day number on week_start

        def week0(clock: np.ndarray) -> np.ndarray:
            day = trading_day(clock)
            weeks = (day - ref) // 7
            return (weeks - weeks % n if n > 1 else weeks) * 7 + ref

        return _Keys(
            lambda c: finish(week0(c)), lambda c, s: finish(week0(c) + 7 * n), (7 * n + 3) * DAY_MS
        )
    span = tf.count if tf.unit == "M" else 12 * tf.count  # in months

    def months0(clock: np.ndarray) -> np.ndarray:
        day = trading_day(clock)
        months = day.astype("datetime64[D]").astype("datetime64[M]").astype(_I64)
        return np.asarray(months - months % span, _I64)

    def to_day(months: np.ndarray) -> np.ndarray:
        return np.asarray(months.astype("datetime64[M]").astype("datetime64[D]").astype(_I64))

    return _Keys(
        lambda c: finish(to_day(months0(c))),
        lambda c, s: finish(to_day(months0(c) + span)),
        (31 * span + 3) * DAY_MS,
    )


# --------------------------------------------------------------------------------------------
# Offsets: zoneinfo transitions applied per constant-offset segment


def _offset_ms(tz: str, t_ms: int) -> int:
    off = dt.datetime.fromtimestamp(t_ms / 1000, tz=ZoneInfo(tz)).utcoffset()
    assert off is not None
    return int(off.total_seconds() * 1000)


@functools.lru_cache(maxsize=4096)
def _year_transitions(tz: str, year: int) -> tuple[tuple[int, int], ...]:
    """(instant ms, offset ms from that instant on) for each offset change in ``year`` (UTC).
    Found by probing every 6 hours and bisecting each change to the millisecond."""
    if tz in ("UTC", "Etc/UTC"):
        return ()
    lo = int(dt.datetime(year, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    hi = int(dt.datetime(year + 1, 1, 1, tzinfo=dt.UTC).timestamp() * 1000)
    step = 6 * HOUR_MS
    out: list[tuple[int, int]] = []
    prev_t, prev_off = lo, _offset_ms(tz, lo)
    t = lo + step
    while t <= hi:
        off = _offset_ms(tz, t)
        if off != prev_off:
            a, b = prev_t, t  # offset(a) = prev_off, offset(b) = off
            while b - a > 1:
                mid = (a + b) // 2
                if _offset_ms(tz, mid) == prev_off:
                    a = mid
                else:
                    b = mid
            out.append((b, off))
            prev_off = off
        prev_t = t
        t += step
    return tuple(out)


def _year_of(t_ms: int) -> int:
    return int(np.datetime64(int(t_ms), "ms").astype("datetime64[Y]").astype(_I64)) + 1970


def _segments(tz: str, lo_ms: int, hi_ms: int) -> tuple[list[int], list[int]]:
    """Transition instants inside (lo, hi] and the offsets of the len+1 segments they cut."""
    base = _offset_ms(tz, lo_ms)
    cuts: list[int] = []
    offs = [base]
    for year in range(_year_of(lo_ms), _year_of(hi_ms) + 1):
        for t, off in _year_transitions(tz, year):
            if lo_ms < t <= hi_ms and off != offs[-1]:
                cuts.append(t)
                offs.append(off)
    return cuts, offs


class BucketEdges:
    """Bucket start/end for one clock and one key function, vectorized per offset segment.
    ``BucketEdges.of(tf, alignment)`` gives the alignment's (session-free) edges of ``tf``."""

    def __init__(self, clock: _Clock, keys: _Keys) -> None:
        self.clock = clock
        self.keys = keys

    @classmethod
    def of(cls, tf: Timeframe, alignment: Alignment) -> BucketEdges:
        return cls(_clock_of(alignment), _keys_for(tf, alignment))

    # start --------------------------------------------------------------------------------
    def start(self, ts: np.ndarray, *, ascending: bool = False) -> np.ndarray:
        """Bucket open per time; ``ascending`` (sorted input) works per segment slice."""
        if not len(ts):
            return np.empty(0, _I64)
        shift = self.clock.shift_ms
        if self.clock.tz in ("UTC", "Etc/UTC"):
            return self.keys.floor(ts + shift if shift else ts) - shift
        lo, hi = (int(ts[0]), int(ts[-1])) if ascending else (int(ts.min()), int(ts.max()))
        span = self.keys.span_ms + DAY_MS
        cuts, offs = _segments(self.clock.tz, lo - span, hi + span)
        if not cuts:
            return self.keys.floor(ts + (offs[0] + shift)) - (offs[0] + shift)
        if ascending:
            return self._start_sorted(ts, cuts, offs)
        seg = np.searchsorted(np.asarray(cuts, _I64), ts, side="right")
        off = np.asarray(offs, _I64)[seg] + shift
        out = self.keys.floor(ts + off) - off
        seg_lo = np.asarray([np.iinfo(_I64).min, *cuts], _I64)[seg]
        bad = np.flatnonzero(out < seg_lo)
        if len(bad):
            for s in np.unique(seg[bad]):
                sel = bad[seg[bad] == s]
                out[sel] = self._start_before_cut(
                    cuts[s - 1], offs[s - 1], int(out[sel[0]] + off[sel[0]])
                )
        return out

    def _start_sorted(self, ts: np.ndarray, cuts: list[int], offs: list[int]) -> np.ndarray:
        """``start`` for ascending times: one constant offset per slice, no per-time lookup."""
        out = np.empty(len(ts), _I64)
        bounds = [0, *np.searchsorted(ts, np.asarray(cuts, _I64), side="left").tolist(), len(ts)]
        for s in range(len(offs)):
            a, b = bounds[s], bounds[s + 1]
            if a == b:
                continue
            off = offs[s] + self.clock.shift_ms
            part = self.keys.floor(ts[a:b] + off) - off
            if s:  # the head of a segment may belong to a bucket opened before its cut
                cut = cuts[s - 1]
                k = int(np.searchsorted(part, cut, side="left"))
                if k:
                    part[:k] = self._start_before_cut(cut, offs[s - 1], int(part[0]) + off)
            out[a:b] = part
        return out

    def _start_before_cut(self, cut: int, off_before: int, key_clock: int) -> int:
        """The bucket of the instant ``cut`` (first of a segment) opened before the segment:
        at the cut when the clock jumped over the bucket's start, else in the segment before."""
        if key_clock >= cut + off_before + self.clock.shift_ms:
            return cut
        return int(self.start(np.asarray([cut - 1], _I64))[0])

    # end ----------------------------------------------------------------------------------
    def end(self, ts: np.ndarray) -> np.ndarray:
        if not len(ts):
            return np.empty(0, _I64)
        shift = self.clock.shift_ms
        if self.clock.tz in ("UTC", "Etc/UTC"):
            c = ts + shift if shift else ts
            return self.keys.next(c, self.keys.floor(c)) - shift
        lo, hi = int(ts.min()), int(ts.max())
        span = self.keys.span_ms + DAY_MS
        cuts, offs = _segments(self.clock.tz, lo - span, hi + span)
        cut_arr = np.asarray(cuts, _I64)
        seg = np.searchsorted(cut_arr, ts, side="right")
        off = np.asarray(offs, _I64)[seg] + shift
        c = ts + off
        out = self.keys.next(c, self.keys.floor(c)) - off
        seg_hi = np.asarray([*cuts, np.iinfo(_I64).max], _I64)[seg]
        bad = np.flatnonzero(out >= seg_hi)  # at a cut the clock may jump back before E
        for s in np.unique(seg[bad]):
            sel = bad[seg[bad] == s]  # all in the segment's last bucket
            cut = int(seg_hi[sel[0]])
            own = int(self.start(ts[sel[:1]])[0])
            after = int(self.start(np.asarray([cut], _I64))[0])
            out[sel] = cut if after != own else int(self.end(np.asarray([cut], _I64))[0])
        return out


# --------------------------------------------------------------------------------------------
# Sessions


def _local_to_utc(tz: str, local_ms: int) -> int:
    """First instant at which the local clock of ``tz`` reads ``local_ms`` or later."""
    cuts, offs = _segments(tz, local_ms - 2 * DAY_MS, local_ms + 2 * DAY_MS)
    hits = [local_ms - off for off in set(offs) if _offset_ms(tz, local_ms - off) == off]
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
        a, b = _time_ms(s.start), _time_ms(s.end)
        if s.wraps:
            inside = (tod >= a) | (tod < b)
            occ_day = np.where(tod >= a, day, day - 1)
        else:
            inside = (tod >= a) & (tod < b)
            occ_day = day
        mask = np.zeros(7, bool)
        mask[list(s.weekdays)] = True
        inside &= mask[_weekday(occ_day)]
        if s.first_day is not None:
            inside &= occ_day >= _day_number(s.first_day)
        if s.last_day is not None:
            inside &= occ_day <= _day_number(s.last_day)
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
    cuts, offs = _segments(tz, int(ts.min()), int(ts.max()))
    if not cuts:
        return np.full(len(ts), offs[0], _I64)
    return np.asarray(offs, _I64)[np.searchsorted(np.asarray(cuts, _I64), ts, side="right")]


# --------------------------------------------------------------------------------------------
# Small helpers


def _day_number(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def _as_i64(ts_ms: np.ndarray) -> np.ndarray:
    return np.asarray(ts_ms, dtype=_I64)
