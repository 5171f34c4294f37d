"""What history is missing from the stores, where, and what to do about it.

``scan(data_dir)`` reads (never writes) three things under a data directory and lists each
missing piece as a ``Missing``:

- **held**: the transformer's checkpoint (``transformer/checkpoint.json``, ``state.held``):
  a stream held by a bad payload stores nothing from its bad day on. The item names the
  symbol, side, day, the payload's field (and index) and error, and how many journal days
  (and, from their raw bodies, bars) wait behind it;
- **gap**: the downloader's fetch journals (``downloader/SYMBOL/SIDE/fetch.bars``): days
  whose latest record is a ``GAP`` — not fetched after retries, or not in the raw cache in
  a rebuild — as runs of consecutive days;
- **skipped**: of those gaps, the days the user skipped (``FLAG_SKIPPED``), with the
  decision read from the raw cache (``raw/_skipped``, ``RawCache.put_skip``): when, why,
  and how many bars the skipped version held.

Each item says it in one line (``message``) and what to do (``todo``: the command that
re-fetches it, or the one that makes it an explicit gap). ``barstream rebuild``,
``verify`` and ``status`` print these same lines; a skipped day is a gap the user chose,
which ``--allow-skipped`` accepts (``failing``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np

from barstream.services.downloader.raw_cache import RawCache, Skip
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.errors import BarstreamError
from barstream.shared.record import FLAG_SKIPPED, JOURNAL_DAY, JOURNAL_GAP, JOURNAL_LIVE
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS

__all__ = [
    "GAP",
    "HELD",
    "SKIPPED",
    "Missing",
    "count_bars",
    "failing",
    "journal_gaps",
    "lines",
    "scan",
    "summary",
]

HELD: Final = "held"
GAP: Final = "gap"
SKIPPED: Final = "skipped"


@dataclass(frozen=True)
class Missing:
    """One missing piece of one (symbol, side): a held stream, a run of gap days, or a day
    the user skipped. ``bars`` is what is not stored when known (from raw bodies), else None."""

    kind: str
    symbol: str
    side: str
    day: dt.date  # first day
    last_day: dt.date
    days: int  # days not stored: the held day and those behind it; the run's days; 1
    error: str = ""  # held: the payload's error; gap: why; skipped: why the day was bad
    field: str = ""  # held: the JSON key at fault (``times``), with ``index`` when known
    index: int | None = None
    bars: int | None = None
    reason: str = ""  # skipped: the user's words
    skipped_ms: int = 0  # skipped: when the user decided (UTC ms)

    @property
    def where(self) -> str:
        days = (
            f"{self.day} … {self.last_day} ({self.days} days)"
            if self.kind == GAP and self.days > 1
            else str(self.day)
        )
        return f"{self.symbol}/{self.side} {days}"

    def message(self) -> str:
        bars = "" if self.bars is None else f", {self.bars:,} bars"
        if self.kind == HELD:
            at = self.field + (f"[{self.index}]" if self.index is not None else "")
            return (
                f"{self.where}: held by a bad payload: field {at or '?'}: {self.error}; "
                f"nothing from this day on is stored ({self.days:,} days{bars} held)"
            )
        if self.kind == GAP:
            return f"{self.where}: gap, no data: {self.error}"
        when = dt.datetime.fromtimestamp(self.skipped_ms / 1000, dt.UTC)
        why = f" ({self.reason})" if self.reason else ""
        bad = f"; it was bad: {self.error}" if self.error else ""
        return (
            f"{self.where}: gap skipped by the user on {when:%Y-%m-%d %H:%M} UTC{why}: "
            f"explicit gap{bars if self.bars else ''} not stored{bad}"
        )

    def todo(self, config: str | None = None) -> str:
        """What to do, as commands (``config``: the ``-c`` file to name in them)."""
        c = f" -c {config}" if config else ""
        last = self.last_day if self.kind == GAP else self.day
        fetch = (
            f"barstream backfill{c}{'' if self.kind == GAP else ' --refetch'} "
            f"--start {self.day} --end {last} --symbols {self.symbol} --sides {self.side}, "
            f"then barstream rebuild{c}"
        )
        skip = (
            f"barstream skip-day{c} --symbol {self.symbol} --side {self.side} --day {self.day}"
            + (f" --end {last}" if last != self.day else "")
            + " --reason TEXT"
        )
        if self.kind == SKIPPED:
            return f"accepted with --allow-skipped; to have the day again: {fetch}"
        what = "a good version of the day" if self.kind == HELD else "the missing days"
        return f"re-fetch {what}: {fetch}; or drop it as an explicit gap: {skip}"

    def as_json(self, config: str | None = None) -> dict[str, Any]:
        out = asdict(self)
        out.update(day=str(self.day), last_day=str(self.last_day))
        out.update(message=self.message(), todo=self.todo(config))
        return out


def failing(items: Iterable[Missing], *, allow_skipped: bool = False) -> list[Missing]:
    """The items that make a command exit 1 (``allow_skipped``: all but the user's gaps)."""
    return [m for m in items if not (allow_skipped and m.kind == SKIPPED)]


def summary(items: list[Missing]) -> str:
    """One line: how much is missing, by kind (bars where the raw bodies tell)."""
    held = [m for m in items if m.kind == HELD]
    gaps = [m for m in items if m.kind == GAP]
    skipped = [m for m in items if m.kind == SKIPPED]
    bars = sum(m.bars or 0 for m in items)
    unknown = any(m.bars is None for m in items)
    kinds = [
        f"{len(held)} stream(s) held by a bad payload ({sum(m.days for m in held):,} days)"
        if held
        else "",
        f"{sum(m.days for m in gaps):,} gap day(s)" if gaps else "",
        f"{len(skipped)} day(s) skipped by the user" if skipped else "",
    ]
    return (
        f"{'at least ' if unknown and bars else ''}{bars:,} bars not stored"
        + (" (gap days: bars unknown)" if unknown else "")
        + ": "
        + ", ".join(k for k in kinds if k)
    )


def lines(items: Iterable[Missing], config: str | None = None) -> Iterator[str]:
    """Each item as printed by rebuild, verify and status: its kind and message, then what
    to do."""
    for m in items:
        yield f"{m.kind.upper():<7} {m.message()}"
        yield f"        to do: {m.todo(config)}"


# -- reading a data directory ---------------------------------------------------------------


class _Times(msgspec.Struct):
    times: msgspec.Raw


_TIMES: Final = msgspec.json.Decoder(_Times)


def count_bars(body: bytes) -> int | None:
    """Bars in a candle body (the length of its ``times``), None when it has no such array."""
    try:
        raw = bytes(_TIMES.decode(body).times).strip()
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if not raw.startswith(b"[") or not raw.endswith(b"]"):
        return None
    inner = raw[1:-1].strip()
    return inner.count(b",") + 1 if inner else 0


def _date(day_ms: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=day_ms // DAY_MS)


def _gap_why(rec: np.void) -> str:
    status, attempts = int(rec["http_status"]), int(rec["attempts"])
    if attempts == 0:
        return "not in the raw cache (a rebuild fetches nothing)"
    last = f"HTTP {status}" if status else "no response"
    return f"not fetched: {attempts} attempt(s), last {last}"


def _journals(data_dir: Path) -> Iterator[tuple[str, str, np.ndarray]]:
    """(symbol, side, journal records) of every fetch journal of the data directory."""
    for path in sorted((data_dir / "downloader").glob("*/*/fetch.bars")):
        with contextlib.suppress(BarstreamError, OSError), Store.open(path, writable=False) as s:
            yield s.meta.symbol, s.meta.side, s.snapshot()


def _latest(journal: np.ndarray) -> np.ndarray:
    """Offsets of each day's latest record, in date order."""
    ts = journal["ts_ms"]
    _, first = np.unique(ts[::-1], return_index=True)  # unique days, sorted; first from the end
    latest: np.ndarray = len(ts) - 1 - first
    return latest


def journal_gaps(data_dir: Path) -> dict[str, tuple[int, int]]:
    """Journal key (``SYMBOL/SIDE/fetch``) → (gap days, of which skipped by the user), from
    the journals themselves (what the downloader's gauges say while it runs)."""
    out: dict[str, tuple[int, int]] = {}
    for symbol, side, journal in _journals(data_dir):
        latest = journal[_latest(journal)] if len(journal) else journal
        gaps = latest[latest["kind"] == JOURNAL_GAP]
        skipped = int(np.count_nonzero(gaps["flags"] & FLAG_SKIPPED))
        out[f"{symbol}/{side}/fetch"] = (len(gaps), skipped)
    return out


def scan(data_dir: Path) -> list[Missing]:
    """Every held stream, gap run and skipped day under ``data_dir`` (module docstring),
    by symbol, side and day."""
    cache = RawCache(data_dir / "raw")
    held = _held_state(data_dir)
    out: list[Missing] = []
    for symbol, side, journal in _journals(data_dir):
        skips: dict[dt.date, Skip] = {}
        with contextlib.suppress(ValueError):
            skips, _ = cache.skips(symbol, side)
        latest = journal[_latest(journal)] if len(journal) else journal
        gaps = latest[latest["kind"] == JOURNAL_GAP]
        skipped = (gaps["flags"] & FLAG_SKIPPED) != 0
        out += _gap_runs(symbol, side, gaps[~skipped])
        for rec in gaps[skipped]:
            out.append(_skipped(cache, symbol, side, rec, skips.get(_date(int(rec["ts_ms"])))))
        hold = held.get(f"{symbol}/{side}/fetch")
        if hold is not None:
            out.append(_held(cache, symbol, side, journal, hold))
    out.sort(key=lambda m: (m.symbol, m.side, m.day, m.kind))
    return out


def _held_state(data_dir: Path) -> dict[str, dict[str, Any]]:
    with contextlib.suppress(BarstreamError, OSError):
        point = Checkpoint(data_dir / "transformer" / "checkpoint.json").load()
        if point is not None:
            held = point.state.get("held")
            if isinstance(held, dict):
                return {k: v for k, v in held.items() if isinstance(v, dict)}
    return {}


def _gap_runs(symbol: str, side: str, gaps: np.ndarray) -> list[Missing]:
    """Consecutive gap days with the same cause, one item each."""
    out: list[Missing] = []
    for rec in gaps:
        day, why = _date(int(rec["ts_ms"])), _gap_why(rec)
        prev = out[-1] if out else None
        if prev is not None and prev.last_day + dt.timedelta(days=1) == day and prev.error == why:
            out[-1] = Missing(GAP, symbol, side, prev.day, day, prev.days + 1, why)
        else:
            out.append(Missing(GAP, symbol, side, day, day, 1, why))
    return out


def _skipped(cache: RawCache, symbol: str, side: str, rec: np.void, skip: Skip | None) -> Missing:
    day, digest = _date(int(rec["ts_ms"])), int(rec["digest"])
    body = cache.body(symbol, side, day, digest, live=False) if digest else None
    return Missing(
        SKIPPED,
        symbol,
        side,
        day,
        day,
        1,
        error=skip.error if skip is not None else "",
        bars=count_bars(body) if body is not None else None,
        reason=skip.reason if skip is not None else "(its skip file is gone)",
        skipped_ms=skip.skipped_ms if skip is not None else int(rec["fetched_ms"]),
    )


def _held(
    cache: RawCache, symbol: str, side: str, journal: np.ndarray, hold: dict[str, Any]
) -> Missing:
    """The held stream: the bad day, and the journal's days from it on that are not stored."""
    offset = int(hold.get("offset", 0))
    behind = journal[offset:]
    behind = behind[np.isin(behind["kind"], (JOURNAL_DAY, JOURNAL_LIVE))]
    bars: int | None = 0
    days: set[int] = set()
    for rec in behind:
        days.add(int(rec["ts_ms"]))
        body = None
        if int(rec["kind"]) == JOURNAL_DAY:
            body = cache.body(
                symbol, side, _date(int(rec["ts_ms"])), int(rec["digest"]), live=False
            )
        n = count_bars(body) if body is not None else None
        bars = None if bars is None or n is None else bars + n
    day = _date(int(hold.get("day_ms", 0)))
    field = str(hold.get("field", ""))
    index = hold.get("index")
    index = index if isinstance(index, int) else None
    error = str(hold.get("error", ""))
    at = field + (f"[{index}]" if index is not None else "")
    for prefix in (f"{symbol}/{side}/{day}: ", f"{at}: "):  # said by the message's own words
        error = error[len(prefix) :] if error.startswith(prefix) else error
    return Missing(
        HELD,
        symbol,
        side,
        day,
        _date(max(days)) if days else day,
        max(len(days), 1),
        error=error,
        field=field,
        index=index,
        bars=bars,
    )
