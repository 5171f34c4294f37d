"""``barstream backfill``: fetch a range of final days into the raw cache.

Uses the downloader's own edge (``HttpSource`` + ``RequestBudget`` + ``RawCache``) with the
configuration's base URL and request budget, so a backfill is exactly as polite as the
service. Days already cached are skipped (``refetch``: fetched again; a body that changed
replaces the cached one, which is kept under ``_versions`` as the downloader keeps a
revised day — how a bad day gets a good version); the current day (by the upstream's clock, read
from its HTTP ``Date``) and later days are never cached. Safe while the downloader runs
(cache writes are atomic). A later ``barstream rebuild`` turns the cache into stores.

Polite and resumable:

- One ``RequestBudget`` (``downloader.requests_per_second``, ``burst``) for every request of
  the run, whatever the number of instrument-sides; requests go over keep-alive
  connections (``http_pool``): a handful of TCP connections, not one per day.
- Each symbol's first day is ``downloader.history_start`` when set, else the first minute
  candle of its instrument metadata (``instruments``: asked once, cached under
  ``raw/_meta``); no request asks for a day before it (those days are counted as
  ``before_start``, not asked).
- A day counts as fetched only once its body is in the raw cache (an atomic write): after a
  kill -9 the next run skips every day fetched; only the days whose requests were in flight
  at the kill (at most ``CONCURRENCY``, none of them written) are asked again.
- The progress bar shows, from the start, the ETA the budget allows (``budget_eta_s``:
  requests left at ``requests_per_second``), beside tqdm's own from the observed rate.

A one-shot command: a day whose fetch fails (after the source's retries) is reported, not
retried later — ``report`` lists the days left missing and the command that asks for them
again. A host that does not resolve stops the backfill at once (every day would fail alike).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Final

from tqdm import tqdm

from barstream.configs import data_root
from barstream.services.downloader.instruments import history_starts
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import (
    HttpSource,
    RequestBudget,
)
from barstream.shared.config import Config
from barstream.shared.errors import HostUnresolved, NotFound, SourceError

#: Fetches in flight at once (the budget decides the rate).
CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Missing:
    """A day the backfill left out of the raw cache, and why (the error's reason)."""

    symbol: str
    side: str
    day: dt.date
    why: str

    def __str__(self) -> str:
        return f"{self.symbol}/{self.side}/{self.day.isoformat()}: {self.why}"


@dataclass
class BackfillResult:
    fetched: int = 0
    cached_already: int = 0
    not_final: int = 0  # the upstream's today or later: never cached
    not_found: list[Missing] = field(default_factory=list)
    failed: list[Missing] = field(default_factory=list)
    #: Days not asked for: the backfill stopped early (``stopped`` says why).
    not_tried: list[Missing] = field(default_factory=list)
    stopped: str = ""
    bytes: int = 0
    elapsed_s: float = 0.0
    replaced: list[Missing] = field(default_factory=list)  # refetch: cached days that changed
    unchanged: int = 0  # refetch: cached days fetched again, the same
    before_start: int = 0  # days before the symbol's history start: not asked for
    starts: dict[str, dt.date] = field(default_factory=dict)  # each symbol's first day
    requests: int = 0  # HTTP requests sent (retries and metadata included)
    connections: int = 0  # TCP connections opened for them

    @property
    def missing(self) -> list[Missing]:
        """Every day asked for that is not in the raw cache now (not-final days aside)."""
        return [*self.failed, *self.not_tried, *self.not_found]


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def budget_eta_s(requests_left: int, rate_per_s: float, tokens: float = 0.0) -> float:
    """Seconds the budget needs for ``requests_left`` more requests (``tokens`` in hand):
    the least the rest can take, known before the first response."""
    return max(requests_left - tokens, 0.0) / rate_per_s


def _hms(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


async def backfill(
    cfg: Config,
    symbols: list[str],
    sides: list[str],
    start: dt.date,
    end: dt.date,
    *,
    progress: bool = True,
    refetch: bool = False,
) -> BackfillResult:
    d = cfg.downloader
    budget = RequestBudget(d.requests_per_second, d.burst)
    source = HttpSource.from_config(d, budget)
    clock_ms = [0]  # the upstream's clock minus ours, from its Date headers

    def today() -> dt.date:
        now = time.time() * 1000 + clock_ms[0]
        return dt.datetime.fromtimestamp(now / 1000, dt.UTC).date()

    raw_root = data_root(cfg) / "raw"
    cache = RawCache(raw_root, today=today)
    res = BackfillResult()
    res.starts = await history_starts(source, raw_root, symbols, d.history_start)
    source.settings = dataclasses.replace(source.settings, history_start=res.starts)
    todo = []
    for sym in symbols:
        first = res.starts.get(sym)
        for side in sides:
            for day in days(start, end):
                if first is not None and day < first:
                    res.before_start += 1
                elif cache.has(sym, side, day) and not refetch:
                    res.cached_already += 1
                else:
                    todo.append((sym, side, day))
    bar = tqdm(total=len(todo), unit="day", desc="backfill", disable=not progress)
    rate = budget.rate_per_s

    def show_eta(done: int, *, refresh: bool) -> None:
        eta = budget_eta_s(len(todo) - done, rate)
        bar.set_postfix_str(
            f"budget {rate:g} req/s, ETA {_hms(eta)}, failed {len(res.failed)}", refresh=refresh
        )

    show_eta(0, refresh=True)  # before the first response: the budget's ETA for them all
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
            if res.stopped:
                res.not_tried.append(Missing(sym, side, day, "not tried"))
                bar.update(1)
                continue
            try:
                result = await source.fetch_day(sym, side, day)
            except NotFound as e:
                res.not_found.append(Missing(sym, side, day, e.reason))
            except HostUnresolved as e:  # every other day would fail alike: stop asking
                res.failed.append(Missing(sym, side, day, e.reason))
                res.stopped = res.stopped or f"{d.base_url}: {e.reason} ({e.hint})"
            except SourceError as e:
                res.failed.append(Missing(sym, side, day, e.reason))
            else:
                if result.server_ms is not None:
                    clock_ms[0] = result.server_ms - int(time.time() * 1000)
                old = cache.get(sym, side, day)
                try:
                    if old is not None and old != result.body and day < today():
                        cache.keep_version(sym, side, day, old)
                    if old != result.body:
                        cache.put(sym, side, day, result.body)
                except ValueError:
                    res.not_final += 1
                else:
                    res.fetched += 1
                    res.bytes += len(result.body)
                    if old is not None and old == result.body:
                        res.unchanged += 1
                    elif old is not None:
                        res.replaced.append(Missing(sym, side, day, "replaced by a new version"))
            show_eta(bar.n + 1, refresh=False)
            bar.update(1)

    try:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    finally:
        bar.close()
        source.close()
    res.requests = source.attempts_total
    res.connections = source.connections_opened
    res.elapsed_s = time.monotonic() - began
    return res


#: Days listed one by one in the report (the rest are counted).
LISTED: Final = 20


def report(res: BackfillResult, *, rerun: str) -> list[str]:
    """What a finished backfill prints: the counts, the days left missing and why, and what
    to do about them. ``rerun`` is the command that asks again, with ``{start}``, ``{end}``,
    ``{symbols}`` and ``{sides}`` fields, filled in here to cover the days left undone."""
    lines = [
        f"backfill: {res.fetched} days fetched ({res.bytes / 1e6:.1f} MB in {res.elapsed_s:.1f}s), "
        f"{res.cached_already} already cached, {res.not_final} not final yet, "
        f"{len(res.not_found)} not found, {len(res.failed)} failed"
        + (f", {res.before_start} before the history start (not asked)" if res.before_start else "")
        + (f", {len(res.not_tried)} not tried" if res.not_tried else "")
        + (
            f"; of the cached days fetched again, {len(res.replaced)} changed, "
            f"{res.unchanged} the same"
            if res.replaced or res.unchanged
            else ""
        )
    ]
    if res.requests:
        lines.append(
            f"backfill: {res.requests} requests over {res.connections} connection(s), "
            f"{res.requests / max(res.elapsed_s, 1e-9):.1f} req/s"
        )
    lines += [f"  {m}" for m in res.replaced[:LISTED]]
    if res.replaced:
        lines.append(
            "backfill: the changed days are new versions in the raw cache (the old ones kept "
            "under _versions): barstream rebuild makes stores of them"
        )
    shown = sorted([*res.failed, *res.not_found], key=lambda m: (m.symbol, m.side, m.day))
    lines += [f"  {m}" for m in shown[:LISTED]]
    if len(shown) > LISTED:
        lines.append(f"  … and {len(shown) - LISTED} more")
    if res.stopped:
        lines.append(f"backfill: stopped early: {res.stopped}")
    undone = [*res.failed, *res.not_tried]
    if undone:
        lines.append(
            f"backfill: {len(undone)} day(s) left undone, not in the raw cache; fix the cause "
            "and run again (cached days are skipped): "
            + rerun.format(
                start=min(m.day for m in undone).isoformat(),
                end=max(m.day for m in undone).isoformat(),
                symbols=",".join(dict.fromkeys(m.symbol for m in undone)),
                sides=",".join(dict.fromkeys(m.side for m in undone)),
            )
        )
    if res.not_found:
        lines.append(f"backfill: {len(res.not_found)} day(s) not found upstream: {NotFound.hint}")
    return lines
