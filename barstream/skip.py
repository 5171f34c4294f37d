"""``barstream skip-day``: the user's decision that a bad historical day is an explicit gap.

For each day asked for, the raw cache's body (if any) is decoded as the transformer would:

- a day that decodes fine is refused (nothing to skip: a wrong date, most likely), and so
  is the current day or a later one — nothing is written then;
- a bad day's version (its digest) — or, for a day with no body, the day itself — is
  recorded as a ``Skip`` beside the bodies (``RawCache.put_skip``: ``raw/_skipped/…``, an
  atomic write), with why it was bad, the user's reason and the time.

The downloader journals a skipped version as a ``GAP`` record flagged ``FLAG_SKIPPED``
instead of its ``DAY`` record: in every rebuild, and in a running downloader as soon as it
sees the skip file (at start, and on its live poll schedule). The transformer, held at that
day, moves past it; ``status``, the metrics (``barstream_gaps``, ``barstream_gaps_skipped``),
``rebuild`` and ``verify`` report the day as a gap skipped by the user. A body with another
digest (a good version, ``barstream backfill --refetch``) is a new version and fills it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from barstream.configs import data_root
from barstream.missing import count_bars
from barstream.services.downloader.raw_cache import RawCache, Skip
from barstream.services.downloader.source import body_digest, day_start_ms
from barstream.services.transformer.transform import decode_candles
from barstream.shared.config import SIDES, Config
from barstream.shared.errors import PayloadInvalid, UsageError


@dataclass(frozen=True)
class Skipped:
    """One day the command recorded as skipped (``again``: it already was, unchanged)."""

    skip: Skip
    path: Path
    bars: int | None
    again: bool

    def __str__(self) -> str:
        s = self.skip
        what = f"version {s.digest}" if s.digest else "no body in the raw cache"
        bars = f", {self.bars:,} bars" if self.bars else ""
        bad = f"; bad: {s.error}" if s.error else ""
        done = "already skipped" if self.again else "skipped"
        return f"{s.symbol}/{s.side} {s.day}: {done} ({what}{bars}{bad}) -> {self.path}"


def skip_days(
    cfg: Config,
    symbol: str,
    side: str,
    first: dt.date,
    last: dt.date,
    reason: str,
    *,
    today: dt.date | None = None,
) -> list[Skipped]:
    """Record days ``first..last`` of ``symbol``/``side`` as skipped (module docstring);
    raises ``UsageError`` (nothing written) for an unknown symbol or side, a day that is
    not over, or a day that decodes fine."""
    if symbol not in cfg.pipeline.symbols:
        raise UsageError("--symbol", symbol, f"not in pipeline.symbols {cfg.pipeline.symbols}")
    if side not in SIDES:
        raise UsageError("--side", side, "must be BID or ASK")
    if last < first:
        raise UsageError("--end", str(last), "is before --day")
    today = today or dt.datetime.now(dt.UTC).date()
    if last >= today:
        raise UsageError("--end" if last != first else "--day", str(last), "is not over yet")
    cache = RawCache(data_root(cfg) / "raw")
    skips, _ = cache.skips(symbol, side)
    now_ms = int(time.time() * 1000)
    todo: list[tuple[Skip, int | None]] = []
    day = first
    while day <= last:
        body = cache.get(symbol, side, day)
        digest, error, bars = "", "", None
        if body is not None:
            try:
                good = decode_candles(
                    body,
                    symbol=symbol,
                    side=side,
                    day_ms=day_start_ms(day),
                    live=False,
                    src_offset=0,
                )
            except PayloadInvalid as e:
                error = e.args[0] if e.args else str(e)
                error = error.removeprefix(f"{symbol}/{side}/{day}: ")
            else:
                raise UsageError(
                    "--day",
                    str(day),
                    f"{symbol}/{side} {day} decodes fine ({len(good):,} bars): nothing to skip",
                )
            digest, bars = f"{body_digest(body):016x}", count_bars(body)
        todo.append(
            (
                Skip(
                    symbol=symbol,
                    side=side,
                    day=day,
                    digest=digest,
                    reason=reason,
                    skipped_ms=now_ms,
                    error=error,
                ),
                bars,
            )
        )
        day += dt.timedelta(days=1)
    out = []
    for skip, bars in todo:
        old = skips.get(skip.day)
        if old is not None and old.digest == skip.digest:
            out.append(Skipped(old, cache.skip_path(symbol, side, skip.day), bars, True))
        else:
            out.append(Skipped(skip, cache.put_skip(skip), bars, False))
    return out
