"""Alignments: which clock bars follow (UTC, MT4 server time), and vectorized bucket edges.

Contract
--------
* An :class:`Alignment` only decides *which* minutes form a bar; it never shifts stored times
  (UTC ms of the bar open).
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
  (vectorized: :func:`offset_segments`); there are no fixed-offset tables.
* Intraday grids restart at every clock midnight (or session origin, ``shared.sessions``), so
  an interval that does not divide a day ends the day with a shorter bar.
* :class:`BucketEdges` gives the open (``start``) and the end (the next bar's open) of the
  bucket of each time, for one clock and one timeframe; sessions are applied on top of it by
  ``shared.sessions.bucket_edges``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

import numpy as np

from barstream.shared.errors import ConfigError
from barstream.shared.timeframe import (
    DAY_MS,
    HOUR_MS,
    Timeframe,
    parse_timeframe,
    time_of_day_ms,
)

_EPOCH_WEEKDAY: Final = 3  # 1970-01-01 was a Thursday (Monday = 0)
_I64 = np.int64


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
        tod_ms = time_of_day_ms(day_start)
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


def bucket_start_ms(
    ts_ms: np.ndarray, tf: Timeframe | str, alignment: Alignment = UTC
) -> np.ndarray:
    """UTC ms of the open of the bar containing each time (alignment clock, no sessions)."""
    tf = parse_timeframe(tf)
    return BucketEdges.of(tf, alignment).start(np.asarray(ts_ms, _I64))


def bucket_end_ms(ts_ms: np.ndarray, tf: Timeframe | str, alignment: Alignment = UTC) -> np.ndarray:
    """UTC ms at which the bar containing each time ends (the next bar's open)."""
    tf = parse_timeframe(tf)
    return BucketEdges.of(tf, alignment).end(np.asarray(ts_ms, _I64))


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


def weekday(day: np.ndarray) -> np.ndarray:
    """Weekday (0 = Monday) of each day number (days since 1970-01-01)."""
    return (day + _EPOCH_WEEKDAY) % 7


def _fold_back(day: np.ndarray) -> np.ndarray:
    """Saturday and Sunday → the Friday before."""
    wd = weekday(day)
    return day - np.where(wd == 5, 1, np.where(wd == 6, 2, 0))


def _fold_forward(day: np.ndarray) -> np.ndarray:
    """Saturday and Sunday → the Monday after."""
    wd = weekday(day)
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


def utc_offset_ms(tz: str, t_ms: int) -> int:
    """UTC offset (ms) of ``tz`` at the instant ``t_ms``."""
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
    prev_t, prev_off = lo, utc_offset_ms(tz, lo)
    t = lo + step
    while t <= hi:
        off = utc_offset_ms(tz, t)
        if off != prev_off:
            a, b = prev_t, t  # offset(a) = prev_off, offset(b) = off
            while b - a > 1:
                mid = (a + b) // 2
                if utc_offset_ms(tz, mid) == prev_off:
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


def offset_segments(tz: str, lo_ms: int, hi_ms: int) -> tuple[list[int], list[int]]:
    """Transition instants inside (lo, hi] and the offsets of the len+1 segments they cut."""
    base = utc_offset_ms(tz, lo_ms)
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

    @classmethod
    def grid(cls, tz: str, interval_ms: int, anchor_ms: int) -> BucketEdges:
        """An intraday grid of ``interval_ms`` on the local clock of ``tz``, anchored at the
        local time of day ``anchor_ms`` and restarting there every day (a session's grid)."""
        return cls(_Clock(tz, 0), _grid_keys(interval_ms, anchor_ms))

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
        cuts, offs = offset_segments(self.clock.tz, lo - span, hi + span)
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
        cuts, offs = offset_segments(self.clock.tz, lo - span, hi + span)
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
