"""The aggregator's pure core: the canonical continuous 1m series of one (symbol, side).

Input: the transformer's store, a log of **day versions**. Every transformer record carries
``src_offset`` = the journal offset of the day version it was decoded from; the records of one
day version are consecutive, share that ``src_offset`` and lie in one UTC day. A later version
of a day (a re-poll of the live day, a re-fetch that found a revision, a late day) replaces the
whole day: minutes missing from it are removed.

Canonical series (what :func:`merge` maintains): for each UTC day, the records of the day's
**latest** version, in time order, days in order. Each aggregator record copies the transformer
record (ts, OHLCV, flags except FLAG_LIVE, session) with ``src_count = 1`` and

* ``src_offset`` = transformer offset of its source record — except that a minute that is
  byte-identical (apart from ``src_offset``) to the canonical minute it replaces keeps the
  older ``src_offset``. An unchanged minute therefore stays unchanged in the store, so a live
  re-poll that only moved the last minute rewrites only that minute (X = its offset);
* FLAG_REVISED added to every record of a day once a version of it *revised* the day: an earlier
  version's non-provisional minute changed or vanished (growth of the live day and changes of
  its provisional last minute are not revisions). The flag is sticky for later versions.

Both rules are a fold over the day's versions in log order, so the canonical store is a pure
function of the transformer store however the log is cut into batches. A day version with no
records (an empty day) cannot be seen here and leaves the day as it was.
"""

from __future__ import annotations

import itertools
from typing import Final

import numpy as np

from barstream.shared.errors import UpstreamInvalid
from barstream.shared.record import FLAG_LIVE, FLAG_PROVISIONAL, FLAG_REVISED, RECORD_DTYPE
from barstream.shared.timeframe import DAY_MS

_WORDS: Final = 8  # a record as 8 little-endian uint64 words
_SRC_OFFSET_WORD: Final = 6  # bytes 48..55
_ALL_BUT_SRC_OFFSET: Final = np.array([i for i in range(_WORDS) if i != _SRC_OFFSET_WORD])
_PRICE_FIELDS: Final = ("ts_ms", "open", "high", "low", "close", "volume")


def merge(
    canonical: np.ndarray, incoming: np.ndarray, incoming_base_offset: int
) -> tuple[int, np.ndarray]:
    """Fold transformer records ``incoming`` (the first at transformer offset
    ``incoming_base_offset``) into the canonical 1m store ``canonical`` (a view, not modified).

    Returns ``(X, R)``: from offset X on, the canonical store now reads R; X is the first
    record that actually differs (``X == len(canonical)`` and R empty when nothing changed).
    """
    n = len(canonical)
    if not len(incoming):
        return n, np.empty(0, RECORD_DTYPE)
    can_ts = canonical["ts_ms"]
    replaced: dict[int, np.ndarray] = {}
    for lo, hi in _versions(incoming):
        version = incoming[lo:hi]
        day = _day_of(version, incoming_base_offset + lo)
        old = replaced.get(day)
        if old is None:
            a, b = _day_range(can_ts, day)
            old = canonical[a:b]
        replaced[day] = _next_version(old, version, incoming_base_offset + lo)
    first_day = min(replaced)
    x0 = int(np.searchsorted(can_ts, first_day * DAY_MS, side="left"))
    pieces: list[np.ndarray] = []
    pos = x0
    for day in sorted(replaced):
        a, b = _day_range(can_ts, day)
        pieces.append(canonical[pos:a])
        pieces.append(replaced[day])
        pos = b
    pieces.append(canonical[pos:])
    tail = np.concatenate(pieces) if len(pieces) > 1 else pieces[0].copy()
    k = _first_difference(canonical[x0:], tail)
    return x0 + k, tail[k:]


def append_only(
    last_ts_ms: int | None, incoming: np.ndarray, base_offset: int, *, in_place: bool = False
) -> np.ndarray | None:
    """``merge``'s result when ``incoming`` only appends: every day version in it is a new
    day after the canonical series' last minute (``last_ts_ms``; None when empty), each in
    one UTC day with strictly increasing minutes — the shape of a backfill or rebuild.
    Then nothing is replaced, so the canonical records are the incoming ones with
    ``src_offset`` = their transformer offset, ``src_count`` = 1 and FLAG_LIVE dropped (as
    ``merge`` does; ``tests/unit/test_rebuild_fast_paths.py`` holds the two equal), appended:
    exactly ``merge(canonical, incoming, base_offset)`` = ``(len(canonical), R)``, without
    its per-day work. Returns None for anything else (``merge`` handles it, and raises the
    precise error for an invalid version). ``in_place``: write the two fields into
    ``incoming`` itself (when it is writable) instead of a copy."""
    n = len(incoming)
    if not n:
        return None
    ts = incoming["ts_ms"]
    if last_ts_ms is not None and int(ts[0]) // DAY_MS <= last_ts_ms // DAY_MS:
        return None  # touches a day the canonical series already has
    if n > 1:
        if not bool(np.all(ts[1:] > ts[:-1])):
            return None
        day = ts // DAY_MS
        src = incoming["src_offset"]
        # A new day version starts exactly where a new day starts: one version per day,
        # each within its day (minutes increase, so days only move forward).
        if not np.array_equal(src[1:] != src[:-1], day[1:] != day[:-1]):
            return None
    if in_place and incoming.flags.writeable and incoming.dtype == RECORD_DTYPE:
        out = incoming
    else:
        out = np.array(incoming, dtype=RECORD_DTYPE, copy=True)
    out["src_offset"] = np.arange(base_offset, base_offset + n, dtype=np.int64)
    out["src_count"] = 1
    out["flags"] &= np.uint16(0xFFFF ^ FLAG_LIVE)  # as merge: provenance is not canonical
    return out


# --------------------------------------------------------------------------------------------


def _versions(incoming: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) of each day version (runs of equal src_offset)."""
    src = incoming["src_offset"]
    cuts = np.flatnonzero(src[1:] != src[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(incoming)]
    return list(itertools.pairwise(bounds))


def _day_of(version: np.ndarray, offset: int) -> int:
    ts = version["ts_ms"]
    day = int(ts[0]) // DAY_MS
    if int(ts[-1]) // DAY_MS != day:
        raise UpstreamInvalid(
            f"transformer offset {offset}: day version {int(version['src_offset'][0])} spans "
            f"more than one UTC day ({int(ts[0])} .. {int(ts[-1])})"
        )
    if len(ts) > 1 and not bool(np.all(ts[1:] > ts[:-1])):
        bad = int(np.flatnonzero(ts[1:] <= ts[:-1])[0]) + 1
        raise UpstreamInvalid(
            f"transformer offset {offset + bad}: ts_ms {int(ts[bad])} is not after "
            f"{int(ts[bad - 1])} in day version {int(version['src_offset'][0])}"
        )
    return day


def _day_range(can_ts: np.ndarray, day: int) -> tuple[int, int]:
    a = int(np.searchsorted(can_ts, day * DAY_MS, side="left"))
    b = int(np.searchsorted(can_ts, (day + 1) * DAY_MS, side="left"))
    return a, b


def _next_version(old: np.ndarray, version: np.ndarray, base_offset: int) -> np.ndarray:
    """The canonical records of a day after ``version`` replaced ``old`` (both one day)."""
    new = np.array(version, dtype=RECORD_DTYPE, copy=True)
    # A minute's provenance (live poll or final file) is not part of the canonical bar: the
    # final file of a day that was followed live then changes only the minutes that really
    # differ (usually the last), instead of every minute of the day.
    new["flags"] &= ~np.uint16(FLAG_LIVE)
    new["src_offset"] = np.arange(base_offset, base_offset + len(new), dtype=np.int64)
    new["src_count"] = 1
    if not len(old):
        return new
    if bool(np.any(old["flags"] & FLAG_REVISED)) or _revises(old, new):
        new["flags"] |= FLAG_REVISED
    # keep the older src_offset of minutes that did not change at all
    pos = np.searchsorted(old["ts_ms"], new["ts_ms"])
    hit = pos < len(old)
    hit[hit] = old["ts_ms"][pos[hit]] == new["ts_ms"][hit]
    if hit.any():
        idx = np.flatnonzero(hit)
        a = _words(new)[idx][:, _ALL_BUT_SRC_OFFSET]
        b = _words(old)[pos[idx]][:, _ALL_BUT_SRC_OFFSET]
        same = idx[(a == b).all(axis=1)]
        new["src_offset"][same] = old["src_offset"][pos[same]]
    return new


def _revises(old: np.ndarray, new: np.ndarray) -> bool:
    """Whether a non-provisional minute of ``old`` changed (prices, volume) or vanished."""
    final = old[(old["flags"] & FLAG_PROVISIONAL) == 0]
    if not len(final):
        return False
    pos = np.searchsorted(new["ts_ms"], final["ts_ms"])
    if bool(np.any(pos >= len(new))):
        return True
    match = new[pos]
    return not all(bool(np.array_equal(match[f], final[f])) for f in _PRICE_FIELDS)


def _words(records: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(records).view("<u8").reshape(-1, _WORDS)


def _first_difference(old: np.ndarray, new: np.ndarray) -> int:
    """Index of the first record where two record arrays differ (byte for byte)."""
    m = min(len(old), len(new))
    if m:
        diff = np.flatnonzero((_words(old[:m]) != _words(new[:m])).any(axis=1))
        if len(diff):
            return int(diff[0])
    return m
