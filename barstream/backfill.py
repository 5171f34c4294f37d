"""``barstream backfill``: fetch a range of final days into the raw cache.

Uses the downloader's own edge (``HttpSource`` + ``RequestBudget`` + ``RawCache``) with the
configuration's base URL and request budget, so a backfill is exactly as polite as the
service. Days already cached are skipped; the current day (by the upstream's clock, read
from its HTTP ``Date``) and later days are never cached. Safe while the downloader runs
(cache writes are atomic). A later ``barstream rebuild`` turns the cache into stores.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from barstream.configs import data_root
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import (
    HttpSource,
    RequestBudget,
)
from barstream.shared.config import Config
from barstream.shared.errors import NotFound, SourceError

#: Fetches in flight at once (the budget decides the rate).
CONCURRENCY = 8


@dataclass
class BackfillResult:
    fetched: int = 0
    cached_already: int = 0
    not_final: int = 0  # the upstream's today or later: never cached
    not_found: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    bytes: int = 0
    elapsed_s: float = 0.0


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


async def backfill(
    cfg: Config,
    symbols: list[str],
    sides: list[str],
    start: dt.date,
    end: dt.date,
    *,
    progress: bool = True,
) -> BackfillResult:
    d = cfg.downloader
    budget = RequestBudget(d.requests_per_second, d.burst)
    source = HttpSource.from_config(d, budget)
    clock_ms = [0]  # the upstream's clock minus ours, from its Date headers

    def today() -> dt.date:
        now = time.time() * 1000 + clock_ms[0]
        return dt.datetime.fromtimestamp(now / 1000, dt.UTC).date()

    cache = RawCache(data_root(cfg) / "raw", today=today)
    res = BackfillResult()
    todo = []
    for sym in symbols:
        for side in sides:
            for day in days(start, end):
                if cache.has(sym, side, day):
                    res.cached_already += 1
                else:
                    todo.append((sym, side, day))
    bar = tqdm(total=len(todo), unit="day", desc="backfill", disable=not progress)
    queue: asyncio.Queue[tuple[str, str, dt.date]] = asyncio.Queue()
    for item in todo:
        queue.put_nowait(item)
    began = time.monotonic()

    async def worker() -> None:
        while True:
            try:
                sym, side, day = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            where = f"{sym}/{side}/{day.isoformat()}"
            try:
                result = await source.fetch_day(sym, side, day)
            except NotFound as e:
                res.not_found.append(f"{where}: {e}")
            except SourceError as e:
                res.failed.append(f"{where}: {e}")
            else:
                if result.server_ms is not None:
                    clock_ms[0] = result.server_ms - int(time.time() * 1000)
                try:
                    cache.put(sym, side, day, result.body)
                except ValueError:
                    res.not_final += 1
                else:
                    res.fetched += 1
                    res.bytes += len(result.body)
            bar.update(1)
            bar.set_postfix(failed=len(res.failed), refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        bar.close()
    res.elapsed_s = time.monotonic() - began
    return res
