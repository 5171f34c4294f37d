"""Every command that reads bars says when history is missing from what it shows: the held
streams, gap days and days skipped by the user (``barstream.missing``, the items
``rebuild`` and ``verify`` list) that meet the range a command reads.

- ``barstream export``: a WARNING line per item on stderr, then exit 1 (``INCOMPLETE``)
  when one cuts the exported range short (``check_export``; ``--allow-skipped``: a day the
  user skipped only warns);
- ``barstream sql``: a WARNING line per item and ``bars(…)`` table (``warn_sql``); the exit
  code stays the query's;
- ``barstream tail``: a WARNING line per item of the followed stream, from the data
  directory of ``-c`` when it is on this host (``warn_tail``).

A held stream meets every range that reaches its day (nothing after it is stored); a gap or
skipped day meets ranges that include it.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from barstream import missing
from barstream.shared.errors import EXIT_ERROR, EXIT_OK
from barstream.shared.timeframe import DAY_MS


def _day(ms: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)


def affecting(
    items: Iterable[missing.Missing],
    symbol: str,
    side: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> list[missing.Missing]:
    """The items of ``symbol``/``side`` whose days meet [start_ms, end_ms) (None: open)."""
    first = None if start_ms is None else _day(start_ms)
    last = None if end_ms is None else _day(end_ms - 1)
    out = []
    for m in items:
        if (m.symbol, m.side) != (symbol, side):
            continue
        ends = None if m.kind == missing.HELD else m.last_day
        if (last is None or m.day <= last) and (first is None or ends is None or ends >= first):
            out.append(m)
    return out


def warn(
    items: Iterable[missing.Missing], command: str, what: str, config: str | None = None
) -> Iterator[str]:
    """``command``'s stderr lines about ``what`` lacking ``items``: a WARNING line each,
    naming it (as verify does), then what to do."""
    for m in items:
        yield f"{command}: WARNING: {what} lacks history: {m.kind.upper()} {m.message()}"
        yield f"{command}:   to do: {m.todo(config)}"


def check_export(
    root: Path,
    symbol: str,
    side: str,
    timeframe: str,
    start_ms: int | None,
    end_ms: int | None,
    config: str | None,
    allow_skipped: bool,
) -> int:
    """Warn about what the exported range lacks; EXIT_ERROR when it is cut short."""
    hit = affecting(missing.scan(root), symbol, side, start_ms, end_ms)
    for line in warn(hit, "export", f"{symbol}/{side}/{timeframe}", config):
        print(line, file=sys.stderr)
    failing = missing.failing(hit, allow_skipped=allow_skipped)
    if not failing:
        return EXIT_OK
    print(
        f"export: INCOMPLETE: the range is cut short: {missing.summary(failing)}",
        file=sys.stderr,
    )
    return EXIT_ERROR


def warn_sql(query: str, *, data_dir: Path | None, config: Any) -> None:
    """WARNING lines for each ``bars(…)`` table of ``query`` that lacks history."""
    from barstream import configs, frames, sql

    root = data_dir if data_dir is not None else configs.data_root(config)
    items = missing.scan(root)
    if not items:
        return
    source = getattr(config, "source", None) if data_dir is None else None
    named = str(source) if source else None
    for call in sql.rewrite(query)[1]:
        hit = affecting(
            items, call.symbol, call.side, frames.time_ms(call.start), frames.time_ms(call.end)
        )
        what = f"bars('{call.symbol}', '{call.side}', '{call.timeframe}')"
        for line in warn(hit, "sql", what, named):
            print(line, file=sys.stderr)


def warn_tail(config_path: Path | None, symbol: str, side: str, timeframe: str) -> None:
    """WARNING lines when the followed stream is held or has gaps, read from the data
    directory of ``config_path`` (nothing without ``-c`` or off the pipeline's host)."""
    if config_path is None:
        return
    from barstream import configs

    root = configs.data_root(configs.load(config_path))
    if not root.is_dir():
        return
    hit = affecting(missing.scan(root), symbol, side)
    for line in warn(hit, "tail", f"{symbol}/{side}/{timeframe}", str(config_path)):
        print(line, file=sys.stderr)
