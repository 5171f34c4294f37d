"""The downloader's fetch schedule, per (symbol, side): what to fetch when, over HTTP and time.

``Fetcher.follow`` walks one stream's days from ``pipeline.start_date`` in date order (raw
cache first, then the ``Source``, ``PREFETCH_DAYS`` in flight), then polls the current day
every ``live_poll_interval_s``; every ``refetch_interval_s`` it re-fetches the last
``refetch_days`` final days (revisions) and every ``gap_retry_interval_s`` the gaps. What
each outcome writes is the journal's decision (``journal.py``); the entries go to the
``Host`` (the service), which applies and commits them. Bodies are kept by the raw cache.

- A final day that is not candle JSON at all (an HTML error page, a cut-off body) is refused
  inside the source's one retry loop (``Source.fetch_day(refuse=...)``): retried within the
  same ``max_retries + 1`` requests, never cached. Judging the candles is the transformer's.
- A response over ``downloader.max_body_bytes`` (as sent or inflated: a gzip bomb), cut
  short, or dripping past ``timeout_s`` is refused by the source itself (``http_body``):
  retried the same way, counted per attempt (``barstream_fetch_attempt_failures_total``),
  never cached.
- A day still failing after its retries becomes a gap (logged, counted); a 404 for a day
  the upstream's clock says is not over yet is no gap: the day is decided again later.
- "Today" is the upstream's clock when it tells us (HTTP ``Date``), else UTC now — the
  demo's fake upstream runs a simulated clock (``Clock``).
- ``cache_only`` replays the raw cache without one request; with ``end_date`` the walk
  ends after that day (a bounded run). A day missing from the cache before the stream's
  last cached day is a gap (``NOT_CACHED``), never a silent end of the stream.
- A day the user skipped (``barstream skip-day``: a ``Skip`` in the raw cache) is journaled
  as an explicit gap instead of its skipped version, by the walk and, for a day already
  journaled, at start and whenever the skips change (``apply_skips``); a body with another
  digest is a new version and fills the gap.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from barstream.services.downloader.journal import Entry, Journal
from barstream.services.downloader.raw_cache import RawCache, Skip
from barstream.services.downloader.source import (
    FetchResult,
    RequestBudget,
    Source,
    body_digest,
    day_start_ms,
)
from barstream.shared.config import Config
from barstream.shared.errors import NotFound, SourceError
from barstream.shared.metrics import DownloaderMetrics, stream_labels
from barstream.shared.record import JOURNAL_DAY, JOURNAL_GAP
from barstream.shared.timeframe import DAY_MS

__all__ = ["PREFETCH_DAYS", "REPLAY_DAYS", "Clock", "Fetcher", "Host", "StreamState"]

#: Days fetched ahead concurrently per stream during a backfill (published in order).
PREFETCH_DAYS = 4
#: Cached days journaled per store write when a backfill or rebuild replays the raw cache.
REPLAY_DAYS = 64
#: Why a day is a gap in a cache-only run (a rebuild): later days are cached, this one not.
NOT_CACHED = "not in the raw cache (cache-only run: nothing is fetched)"


def not_candles(body: bytes) -> str | None:
    """None when ``body`` is a JSON object with candle arrays, else why not."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        return f"invalid JSON: {e}"
    if not isinstance(obj, dict) or "times" not in obj:
        return "no 'times' array"
    for key in ("times", "opens", "highs", "lows", "closes", "volumes"):
        if key in obj and not isinstance(obj[key], list):
            return f"{key!r} is a {type(obj[key]).__name__}, not an array"
    return None


def date_of(day_ms: int) -> dt.date:
    """The UTC day that starts at ``day_ms``."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=day_ms // DAY_MS)


class Clock:
    """UTC now, corrected by the upstream's clock when responses carry one."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def today(self) -> dt.date:
        return dt.datetime.fromtimestamp(self.now_ms() / 1000, dt.UTC).date()

    def observe(self, server_ms: int | None) -> None:
        if server_ms is not None:
            self.offset_ms = server_ms - int(time.time() * 1000)


@dataclass
class StreamState:
    """One (symbol, side): its journal store's ``key``, day index and schedule."""

    symbol: str
    side: str
    key: str
    journal: Journal
    next_day: dt.date | None = None  # the first day the backfill has not decided yet
    last_refetch: float = 0.0  # time.monotonic() of the last re-fetch round
    last_gap_retry: float = 0.0
    skips: dict[dt.date, Skip] = field(default_factory=dict)  # the user's skipped days
    skips_stamp: int | None = -1  # RawCache.skips_stamp when they were read (-1: never)
    last_cached: dt.date | None = None  # cache-only: the stream's last cached day

    def __post_init__(self) -> None:
        if self.next_day is None:
            resume = self.journal.resume_day_ms()
            self.next_day = date_of(resume) if resume is not None else None


class Host(Protocol):
    """What the fetch schedule needs from its service."""

    log: logging.Logger

    def write(self, st: StreamState, entry: Entry | None) -> None:
        """Apply a journal entry (None: nothing to write) to the stream's store."""

    def maybe_commit(self, *, idle: bool = False) -> bool: ...

    def commit(self) -> None: ...

    def stopped(self) -> bool: ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less when the service stops."""


class Fetcher:
    """The schedule above for every stream of one service; see the module docstring."""

    def __init__(
        self,
        host: Host,
        config: Config,
        source: Source,
        cache: RawCache,
        clock: Clock,
        budget: RequestBudget,
        metrics: DownloaderMetrics,
    ) -> None:
        self.host = host
        self.log = host.log
        self.settings = config.downloader
        self.start_date = config.pipeline.start_date
        self.source = source
        self.cache = cache
        self.clock = clock
        self.budget = budget
        self.metrics = metrics

    async def follow(self, st: StreamState) -> None:
        """Backfill the stream's days in order, then follow the live day."""
        host = self.host
        day = st.next_day or self.start_date
        end = self.settings.end_date
        if self.settings.cache_only:
            st.last_cached = max(self.cache.days(st.symbol, st.side), default=None)
        self.load_skips(st)
        self.apply_skips(st)
        while not host.stopped():
            today = self.clock.today()
            last = end if end is not None else today - dt.timedelta(days=1)
            if day <= last:
                replayed = self.replay_cached(st, day, last)
                if replayed:
                    day += dt.timedelta(days=replayed)
                    st.next_day = day
                    host.maybe_commit()
                    await asyncio.sleep(0)  # let the feed server send what was committed
                    continue
                batch = [
                    day + dt.timedelta(days=i)
                    for i in range(PREFETCH_DAYS)
                    if day + dt.timedelta(days=i) <= last
                ]
                results = await asyncio.gather(*(self.final(st, d) for d in batch))
                for d, result in zip(batch, results, strict=True):
                    if result is None and self.settings.cache_only:
                        self.log.info("%s: raw cache ends before %s (cache-only)", st.key, d)
                        return
                    if result is None:
                        break  # not final by the upstream's clock: decide again with it
                    self.record_final(st, d, result)
                    day = d + dt.timedelta(days=1)
                st.next_day = day
                host.maybe_commit()
                continue
            if end is not None or self.settings.cache_only:
                host.commit()
                return  # a bounded run (end_date) or a rebuild: done
            await self.poll_live(st, today)
            await self.maintenance(st, today)
            host.maybe_commit(idle=True)
            await host.sleep(self.settings.live_poll_interval_s)

    def replay_cached(self, st: StreamState, day: dt.date, last: dt.date) -> int:
        """Journal a run of consecutive cached days from ``day`` (at most ``REPLAY_DAYS``,
        up to ``last``) with one store write: a backfill or rebuild over the raw cache,
        where every day is final (``Journal.replay``). Returns the days consumed; 0 when
        ``day`` is not cached or the journal ends with a live record (the day-by-day path
        keeps the live record last)."""
        if st.journal.live_tail:
            return 0
        days: list[tuple[int, bytes, int]] = []
        d = day
        while d <= last and len(days) < REPLAY_DAYS:
            body = self.cache.get(st.symbol, st.side, d)
            digest = body_digest(body) if body is not None else 0
            skip = st.skips.get(d)
            if skip is not None and skip.digest_int == digest:
                if days:
                    break  # journal the days before it first (date order)
                self.write(st, st.journal.skip(day_start_ms(d), digest, skip.skipped_ms))
                return 1
            if body is None:
                break
            days.append((day_start_ms(d), body, digest))
            d += dt.timedelta(days=1)
        if days:
            self.write(st, st.journal.replay(days))
        return len(days)

    def write(self, st: StreamState, entry: Entry | None) -> None:
        """Write a journal entry (if any) and keep the stream's gap gauges current."""
        if entry is not None:
            self.host.write(st, entry)
            self.gauges(st)

    def gauges(self, st: StreamState) -> None:
        labels = stream_labels(st.key)
        self.metrics.gaps.labels(*labels).set(st.journal.gaps)
        self.metrics.skipped.labels(*labels).set(st.journal.skipped)

    # -- the user's skipped days ----------------------------------------------------------

    def load_skips(self, st: StreamState) -> bool:
        """Read the stream's skipped days again if they changed; True when they did."""
        stamp = self.cache.skips_stamp(st.symbol, st.side)
        if stamp == st.skips_stamp:
            return False
        st.skips_stamp = stamp
        st.skips, bad = self.cache.skips(st.symbol, st.side)
        for why in bad:
            self.metrics.errors.labels("bad_skip_file").inc()
            self.log.error("%s: ignored a skip file: %s", st.key, why)
        return True

    def apply_skips(self, st: StreamState) -> None:
        """Journal every skipped day the journal holds as another record (its skipped
        version, or a gap) as the explicit gap the user chose. Days the walk has not
        reached yet wait for it (days are journaled in date order)."""
        for day, skip in sorted(st.skips.items()):
            day_ms = day_start_ms(day)
            if day_ms not in st.journal.days:
                continue
            entry = st.journal.skip(day_ms, skip.digest_int, skip.skipped_ms)
            if entry is not None:
                why = f" ({skip.reason})" if skip.reason else ""
                self.log.warning("%s: %s is a gap the user skipped%s", st.key, day, why)
                self.write(st, entry)

    async def final(self, st: StreamState, day: dt.date) -> FetchResult | str | None:
        """A final day's body: from the raw cache, else fetched and cached. A string is
        the error of a day that failed (it becomes a gap); None: cache-only and absent, or
        the upstream's clock (the 404's ``Date``) says the day is not over yet — our clock
        was not in step with the upstream's (just started, or skewed across midnight)."""
        body = self.cache.get(st.symbol, st.side, day)
        if body is not None:
            path = str(self.cache.path(st.symbol, st.side, day))
            return FetchResult(st.symbol, st.side, day, path, body, 200, 0, 0.0, False)
        if self.settings.cache_only:
            if st.last_cached is not None and day < st.last_cached:
                return NOT_CACHED
            return None
        try:
            refuse = functools.partial(self._refuse, st)
            result = await self.source.fetch_day(st.symbol, st.side, day, refuse=refuse)
        except NotFound as e:
            self.clock.observe(e.server_ms)
            if day >= self.clock.today():
                self.log.info("%s: %s is not over upstream yet; not a gap", st.key, day)
                return None
            self.metrics.fetches.labels("not_found").inc()
            self.metrics.errors.labels("not_found").inc()
            self.log.error("%s", e)
            return f"404: {e}"
        except SourceError as e:
            self.metrics.fetches.labels("failed").inc()
            self.metrics.errors.labels("fetch_failed").inc()
            self.log.error(
                "%s; recorded as a gap, retried every %.0fs", e, self.settings.gap_retry_interval_s
            )
            return str(e)
        finally:
            self._budget_gauges()
        self.clock.observe(result.server_ms)
        self.metrics.fetches.labels("ok").inc()
        if day < self.clock.today():
            self.cache.put(st.symbol, st.side, day, result.body)
        return result

    def _refuse(self, st: StreamState, result: FetchResult) -> str | None:
        """Refuse a final day's body that is not a candle JSON object at all: the source
        retries it like a 5xx. Whether the candles inside are valid is the transformer's
        judgement."""
        why = self._not_candles(
            st, result.body, f"{result.day}: response", f"retry {result.attempts}"
        )
        return None if why is None else f"not candle JSON: {why}"

    def _not_candles(self, st: StreamState, body: bytes, what: str, then: str) -> str | None:
        """``not_candles``, counted and logged (``what`` is not candle JSON; ``then``)."""
        why = not_candles(body)
        if why is not None:
            self.metrics.errors.labels("unparsable_body").inc()
            self.log.warning("%s: %s is not candle JSON (%s); %s", st.key, what, why, then)
        return why

    def record_final(self, st: StreamState, day: dt.date, result: FetchResult | str) -> None:
        """Journal a final day's outcome: its body, or (a string) a gap — or the explicit
        gap the user chose when it is the skipped version (or no body, for a skipped day)."""
        day_ms = day_start_ms(day)
        skip = st.skips.get(day)
        digest = body_digest(result.body) if isinstance(result, FetchResult) else None
        if skip is not None and digest in (None, skip.digest_int):
            entry = st.journal.skip(day_ms, skip.digest_int, skip.skipped_ms)
        elif isinstance(result, FetchResult):
            assert digest is not None
            entry = st.journal.final(
                day_ms, result.body, digest, result.status, result.attempts, self.clock.now_ms()
            )
        else:
            if result == NOT_CACHED:
                self.log.error("%s: %s is %s: journaled as a gap", st.key, day, NOT_CACHED)
            entry = st.journal.gap(day_ms)
        self.write(st, entry)

    async def poll_live(self, st: StreamState, today: dt.date) -> None:
        try:
            result = await self.source.fetch_live(st.symbol, st.side, today)
        except SourceError as e:
            self.metrics.fetches.labels("live_failed").inc()
            self.log.warning(
                "%s: live poll failed: %s; next poll in %.0fs",
                st.key,
                e,
                self.settings.live_poll_interval_s,
            )
            return
        finally:
            self._budget_gauges()
        self.clock.observe(result.server_ms)
        if self.clock.today() != today:
            return  # the upstream's today is another day: our clock was not in step yet
        then = f"next poll in {self.settings.live_poll_interval_s:.0f}s"
        if self._not_candles(st, result.body, "live response", then) is not None:
            return
        self.metrics.fetches.labels("live").inc()
        digest = body_digest(result.body)
        entry = st.journal.live(
            day_start_ms(today),
            len(result.body),
            digest,
            result.status,
            result.attempts,
            self.clock.now_ms(),
        )
        if entry is None:
            return  # unchanged since the last poll
        self.cache.put_live(st.symbol, st.side, digest, result.body)
        self.host.write(st, entry)

    async def maintenance(self, st: StreamState, today: dt.date) -> None:
        """Apply changed skips; re-fetch recent days (revisions) and retry gaps, on their
        schedules."""
        if self.load_skips(st):
            self.apply_skips(st)
        now = time.monotonic()
        if self.settings.refetch_days and now - st.last_refetch >= self.settings.refetch_interval_s:
            st.last_refetch = now
            self.log.info(
                "%s: re-fetching the last %d days to detect revisions",
                st.key,
                self.settings.refetch_days,
            )
            for back in range(self.settings.refetch_days, 0, -1):
                day = today - dt.timedelta(days=back)
                if day < self.start_date:
                    continue
                await self.refetch(st, day)
        if now - st.last_gap_retry >= self.settings.gap_retry_interval_s:
            st.last_gap_retry = now
            for day_ms in st.journal.gap_days_ms():
                await self.refetch(st, date_of(day_ms))

    async def refetch(self, st: StreamState, day: dt.date) -> None:
        """Fetch a final day again: a changed one is cached (the earlier version kept) and
        journaled again — a revision, or a gap filled. A body that is not candle JSON is
        refused as on the first fetch (never cached, never taken for a revision)."""
        try:
            refuse = functools.partial(self._refuse, st)
            result = await self.source.fetch_day(st.symbol, st.side, day, refuse=refuse)
        except SourceError as e:
            self.log.warning("%s: re-fetch of %s failed: %s", st.key, day, e)
            return
        finally:
            self._budget_gauges()
        self.clock.observe(result.server_ms)
        day_ms = day_start_ms(day)
        digest = body_digest(result.body)
        if st.journal.decided(day_ms, digest):
            self.log.debug("%s: %s unchanged", st.key, day)
            return
        old = self.cache.get(st.symbol, st.side, day)
        if old is not None:
            self.cache.keep_version(st.symbol, st.side, day, old)
        self.cache.put(st.symbol, st.side, day, result.body)
        prev = st.journal.days.get(day_ms)
        if prev is not None and prev.kind == JOURNAL_DAY:
            self.metrics.revisions.labels(*stream_labels(st.key)).inc()
            self.log.warning(
                "%s: %s was revised upstream (content changed); republishing", st.key, day
            )
        elif prev is not None and prev.kind == JOURNAL_GAP:
            self.log.info("%s: gap %s filled", st.key, day)
        self.record_final(st, day, result)

    def _budget_gauges(self) -> None:
        self.metrics.budget_requests.set(self.budget.requests_total)
        self.metrics.budget_wait.set(self.budget.wait_seconds_total)
