"""Downloader service: Dukascopy's JSON API → raw cache + fetch journal → feed.

Wiring: for every configured (symbol, side) a task walks the days from
``pipeline.start_date`` in date order (raw cache first, then the ``Source``), appends one
journal record per day to the stream's store ``SYMBOL/SIDE/fetch`` and serves the journal
with each record's raw body attached (read back from the raw cache / live files). Then it
polls the current day every ``live_poll_interval_s``. All tasks share one request budget.

Journal rules (what the transformer can rely on):

- Days appear in date order; a day that still fails after retries is an explicit ``GAP``
  record (metrics, logs, ``status``), retried every ``gap_retry_interval_s`` and appended
  again as a late ``DAY`` record when it succeeds.
- The current day is one ``LIVE`` record (flag PROVISIONAL), always the journal's last: a
  re-poll whose content changed rewrites it in place; when the day is over, its final
  ``DAY`` record replaces it. A revision or late day appended while a live record is the
  tail goes before it (tail rewritten as [new record, live record]).
- Every ``refetch_interval_s`` the last ``refetch_days`` final days are fetched again; a day
  whose content changed (digest) is appended again with FLAG_REVISED (Dukascopy revises).
- ``cache_only`` rebuilds from the raw cache without one request.

Time: "today" is the upstream's clock when it tells us (HTTP ``Date``), else UTC now — the
demo's fake upstream runs a simulated clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from prometheus_client import Counter, Gauge

from barstream.services.downloader.source import (
    FetchResult,
    HttpSource,
    RawCache,
    RequestBudget,
    RetryPolicy,
    Source,
    SourceSettings,
    body_digest,
    day_start_ms,
)
from barstream.shared.config import Config
from barstream.shared.errors import NotFound, SourceError, TransientSourceError
from barstream.shared.fsio import atomic_write
from barstream.shared.header import StoreMeta
from barstream.shared.record import (
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    JOURNAL_DAY,
    JOURNAL_DTYPE,
    JOURNAL_GAP,
    JOURNAL_LIVE,
    KIND_JOURNAL,
)
from barstream.shared.service import Change, Service
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS

#: Bytes of raw bodies per feed batch at most (a batch never splits a record from its body).
BATCH_BODY_BYTES = 8 << 20
#: Days fetched ahead concurrently per stream during a backfill (published in order).
PREFETCH_DAYS = 4
#: Cached days journaled per store write when a backfill or rebuild replays the raw cache.
REPLAY_DAYS = 64
#: Bodies of recently journaled days kept in memory for the feed's attachments (bytes at
#: most): a backfill's bodies are sent right after their commit, without reading the raw
#: cache again. Older bodies are read back from the raw cache (and their digest checked).
RECENT_BODY_BYTES = 256 << 20


def _not_candles(body: bytes) -> str | None:
    """None when ``body`` is a JSON object with candle arrays, else why not."""
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        return f"invalid JSON: {e}"
    if not isinstance(obj, dict) or "times" not in obj:
        return "no 'times' array"
    return None


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
class DayState:
    offset: int  # journal offset of the day's latest record
    kind: int
    digest: int
    version: int


@dataclass
class StreamState:
    symbol: str
    side: str
    store: Store
    days: dict[int, DayState] = field(default_factory=dict)  # day_ms → latest record
    gaps: int = 0  # days whose latest record is a GAP
    next_day: dt.date | None = None
    last_refetch: float = 0.0
    last_gap_retry: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.symbol}/{self.side}/fetch"


def _date(day_ms: int) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=day_ms // DAY_MS)


class Downloader(Service):
    name = "downloader"

    def __init__(
        self,
        config: Config,
        *,
        drain: bool = False,
        serve_metrics: bool = True,
        source: Source | None = None,
    ) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        d = config.downloader
        self.settings = d
        self.clock = Clock()
        self.budget = RequestBudget(d.requests_per_second, d.burst)
        self.source: Source = source or HttpSource(
            SourceSettings(
                base_url=d.base_url,
                timeout_s=d.timeout_s,
                retry=RetryPolicy(max_attempts=d.max_retries + 1),
                history_start=dict(d.history_start),
            ),
            self.budget,
        )
        root = Path(config.pipeline.data_dir)
        self.cache = RawCache(root / "raw", today=self.clock.today)
        self.live_dir = self.stores.root / "live"
        self.live_dir.mkdir(parents=True, exist_ok=True)
        self.versions_dir = root / "raw" / "_versions"
        self.streams: dict[str, StreamState] = {}
        #: (stream, journal offset) → (digest, body) of recently journaled days.
        self._recent: dict[tuple[str, int], tuple[int, bytes]] = {}
        self._recent_bytes = 0
        self._year_dirs: dict[tuple[str, str, int], str | None] = {}
        self.fetches = Counter(
            "barstream_fetches",
            "Day fetches by outcome.",
            ["outcome"],
            registry=self.metrics.registry,
        )
        self.gap_days = Gauge(
            "barstream_gaps",
            "Days that could not be fetched (explicit gaps).",
            ["stream"],
            registry=self.metrics.registry,
        )
        self.budget_requests = Gauge(
            "barstream_request_budget_requests",
            "Requests that took a token from the budget.",
            registry=self.metrics.registry,
        )
        self.budget_wait = Gauge(
            "barstream_request_budget_wait_seconds",
            "Seconds spent waiting for the request budget.",
            registry=self.metrics.registry,
        )
        self.revisions = Counter(
            "barstream_revisions",
            "Days whose content changed on re-fetch.",
            ["stream"],
            registry=self.metrics.registry,
        )
        for symbol, side in config.streams():
            store = self.stores.ensure(StoreMeta(symbol, side, "fetch", kind=KIND_JOURNAL))
            st = StreamState(symbol, side, store)
            self._index(st)
            self.streams[st.key] = st

    # -- wiring -------------------------------------------------------------------------

    async def main(self) -> None:
        server = self.serve_feed(attachments=self.attachments, cut=self.cut)
        serving = asyncio.create_task(server.run())
        workers = [asyncio.create_task(self.follow(st)) for st in self.streams.values()]
        if self.drain:
            try:
                await asyncio.gather(*workers)
            finally:
                self.commit()
            server.done = True
            await server.wait_drained()
            server.close()
            await serving
            return
        await self.serve_until_stopped(serving, *workers)

    def attachments(self, key: str, start: int, records: np.ndarray) -> list[bytes]:
        st = self.streams[key]
        return [self._body(st, rec, start + i) for i, rec in enumerate(records)]

    @staticmethod
    def cut(_key: str, records: np.ndarray) -> int:
        sizes = np.cumsum(records["body_len"])
        return max(1, int(np.searchsorted(sizes, BATCH_BODY_BYTES, side="right")))

    # -- one stream ---------------------------------------------------------------------

    async def follow(self, st: StreamState) -> None:
        """Backfill the stream's days in order, then follow the live day."""
        day = st.next_day or self.config.pipeline.start_date
        end = self.settings.end_date
        while not self._stopped():
            today = self.clock.today()
            last = end if end is not None else today - dt.timedelta(days=1)
            if day <= last:
                replayed = self._replay_cached(st, day, last)
                if replayed:
                    day += dt.timedelta(days=replayed)
                    st.next_day = day
                    self.maybe_commit()
                    await asyncio.sleep(0)  # let the feed server send what was committed
                    continue
                batch = [
                    day + dt.timedelta(days=i)
                    for i in range(PREFETCH_DAYS)
                    if day + dt.timedelta(days=i) <= last
                ]
                results = await asyncio.gather(*(self._final(st, d) for d in batch))
                for d, result in zip(batch, results, strict=True):
                    if result is None and self.settings.cache_only:
                        self.log.info("%s: raw cache ends before %s (cache-only)", st.key, d)
                        return
                    if result is None:
                        break  # not final by the upstream's clock: decide again with it
                    self._record_final(st, d, result)
                    day = d + dt.timedelta(days=1)
                st.next_day = day
                self.maybe_commit()
                continue
            if end is not None or self.settings.cache_only:
                self.commit()
                return  # a bounded run (end_date) or a rebuild: done
            await self._poll_live(st, today)
            await self._maintenance(st, today)
            self.maybe_commit(idle=True)
            await self._sleep(self.settings.live_poll_interval_s)

    async def _final(self, st: StreamState, day: dt.date) -> FetchResult | str | None:
        """A final day's body: from the raw cache, else fetched and cached. A string is
        the error of a day that failed (it becomes a gap); None: cache-only and absent, or
        the upstream's clock (the 404's ``Date``) says the day is not over yet — our clock
        was not in step with the upstream's (just started, or skewed across midnight)."""
        body = self.cache.get(st.symbol, st.side, day)
        if body is not None:
            return FetchResult(
                st.symbol,
                st.side,
                day,
                str(self.cache.path(st.symbol, st.side, day)),
                body,
                200,
                0,
                0.0,
                False,
            )
        if self.settings.cache_only:
            return None
        try:
            result = await self._fetch_parsable(st, day)
        except NotFound as e:
            self.clock.observe(e.server_ms)
            if day >= self.clock.today():
                self.log.info("%s: %s is not over upstream yet; not a gap", st.key, day)
                return None
            self.fetches.labels("not_found").inc()
            self.metrics.errors.labels("not_found").inc()
            self.log.error("%s", e)
            return f"404: {e}"
        except SourceError as e:
            self.fetches.labels("failed").inc()
            self.metrics.errors.labels("fetch_failed").inc()
            self.log.error(
                "%s; recorded as a gap, retried every %.0fs", e, self.settings.gap_retry_interval_s
            )
            return str(e)
        finally:
            self._budget_gauges()
        self._observe(result)
        self.fetches.labels("ok").inc()
        if day < self.clock.today():
            self.cache.put(st.symbol, st.side, day, result.body)
        return result

    async def _fetch_parsable(self, st: StreamState, day: dt.date) -> FetchResult:
        """Fetch a final day, refusing bodies that are not a candle JSON object at all (an
        HTML error page, a cut-off body): those are retried like a 5xx and never cached.
        Whether the candles inside are valid is the transformer's judgement."""
        for attempt in range(1, self.settings.max_retries + 2):
            result = await self.source.fetch_day(st.symbol, st.side, day)
            why = _not_candles(result.body)
            if why is None:
                return result
            self.metrics.errors.labels("unparsable_body").inc()
            self.log.warning(
                "%s: %s: response is not candle JSON (%s); retry %d", st.key, day, why, attempt
            )
            await self._sleep(min(30.0, 0.2 * 2**attempt))
        raise TransientSourceError(
            f"still not candle JSON after {self.settings.max_retries + 1} fetches",
            symbol=st.symbol,
            side=st.side,
            day=day.isoformat(),
        )

    def _record_final(
        self, st: StreamState, day: dt.date, result: FetchResult | str | None
    ) -> None:
        day_ms = day_start_ms(day)
        prev = st.days.get(day_ms)
        if isinstance(result, FetchResult):
            digest = body_digest(result.body)
            if prev is not None and prev.kind == JOURNAL_DAY and prev.digest == digest:
                return  # already in the journal (restart)
            flags = FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0
            rec = self._journal_record(
                day_ms,
                JOURNAL_DAY,
                result.body,
                result.status,
                result.attempts,
                flags,
                prev,
                digest=digest,
            )
            self._put(st, rec, result.body)
        else:
            if prev is not None and prev.kind in (JOURNAL_DAY, JOURNAL_GAP):
                return  # keep the good version / the known gap
            rec = self._journal_record(day_ms, JOURNAL_GAP, b"", 0, 0, 0, prev)
            self._put(st, rec)
        self.gap_days.labels(st.key).set(self._gaps(st))

    async def _poll_live(self, st: StreamState, today: dt.date) -> None:
        try:
            result = await self.source.fetch_live(st.symbol, st.side, today)
        except SourceError as e:
            self.fetches.labels("live_failed").inc()
            self.log.warning(
                "%s: live poll failed: %s; next poll in %.0fs",
                st.key,
                e,
                self.settings.live_poll_interval_s,
            )
            return
        finally:
            self._budget_gauges()
        self._observe(result)
        if self.clock.today() != today:
            return  # the upstream's today is another day: our clock was not in step yet
        why = _not_candles(result.body)
        if why is not None:
            self.metrics.errors.labels("unparsable_body").inc()
            self.log.warning(
                "%s: live response is not candle JSON (%s); next poll in %.0fs",
                st.key,
                why,
                self.settings.live_poll_interval_s,
            )
            return
        self.fetches.labels("live").inc()
        day_ms = day_start_ms(today)
        digest = body_digest(result.body)
        prev = st.days.get(day_ms)
        if prev is not None and prev.kind == JOURNAL_LIVE and prev.digest == digest:
            return
        atomic_write(
            self.live_dir / f"{st.symbol}-{st.side}-{digest:016x}.json", result.body, durable=True
        )
        rec = self._journal_record(
            day_ms,
            JOURNAL_LIVE,
            result.body,
            result.status,
            result.attempts,
            FLAG_LIVE | FLAG_PROVISIONAL,
            None,
        )
        self._put(st, rec)

    async def _maintenance(self, st: StreamState, today: dt.date) -> None:
        """Re-fetch recent days (revisions) and retry gaps, on their schedules."""
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
                if day < self.config.pipeline.start_date:
                    continue
                await self._refetch(st, day)
        if now - st.last_gap_retry >= self.settings.gap_retry_interval_s:
            st.last_gap_retry = now
            for day_ms, ds in sorted(st.days.items()):
                if ds.kind == JOURNAL_GAP:
                    await self._refetch(st, _date(day_ms))

    async def _refetch(self, st: StreamState, day: dt.date) -> None:
        try:
            result = await self.source.fetch_day(st.symbol, st.side, day)
        except SourceError as e:
            self.log.warning("%s: re-fetch of %s failed: %s", st.key, day, e)
            return
        finally:
            self._budget_gauges()
        self._observe(result)
        day_ms = day_start_ms(day)
        prev = st.days.get(day_ms)
        digest = body_digest(result.body)
        if prev is not None and prev.kind == JOURNAL_DAY and prev.digest == digest:
            self.log.debug("%s: %s unchanged", st.key, day)
            return
        old = self.cache.get(st.symbol, st.side, day)
        if old is not None:
            self._keep_version(st, day, old)
        self.cache.put(st.symbol, st.side, day, result.body)
        if prev is not None and prev.kind == JOURNAL_DAY:
            self.revisions.labels(st.key).inc()
            self.log.warning(
                "%s: %s was revised upstream (content changed); republishing", st.key, day
            )
        elif prev is not None and prev.kind == JOURNAL_GAP:
            self.log.info("%s: gap %s filled", st.key, day)
        flags = FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0
        rec = self._journal_record(
            day_ms, JOURNAL_DAY, result.body, result.status, result.attempts, flags, prev
        )
        self._put(st, rec)
        self.gap_days.labels(st.key).set(self._gaps(st))

    # -- journal ------------------------------------------------------------------------

    def _journal_record(
        self,
        day_ms: int,
        kind: int,
        body: bytes,
        status: int,
        attempts: int,
        flags: int,
        prev: DayState | None,
        *,
        digest: int | None = None,
    ) -> np.ndarray:
        rec = np.zeros(1, dtype=JOURNAL_DTYPE)
        rec["ts_ms"] = day_ms
        rec["fetched_ms"] = self.clock.now_ms() if attempts else 0
        rec["body_len"] = len(body)
        if digest is None:
            digest = body_digest(body) if body else 0
        rec["digest"] = digest
        rec["http_status"] = status
        rec["attempts"] = attempts
        rec["version"] = (prev.version + 1) if prev is not None and kind != JOURNAL_LIVE else 1
        rec["kind"] = kind
        rec["src_offset"] = -1
        rec["flags"] = flags
        return rec

    def _put(self, st: StreamState, rec: np.ndarray, body: bytes = b"") -> None:
        """Append ``rec``, keeping a live (provisional) record as the journal's last.
        ``body`` (a final day's) is kept in memory for the feed's attachments."""
        store = st.store
        n = store.length
        at, recs = n, rec
        if n and int(store.view(n - 1, n)["kind"][0]) == JOURNAL_LIVE:
            live = store.view(n - 1, n).copy()
            live_day = int(live["ts_ms"][0])
            day_ms = int(rec["ts_ms"][0])
            at = n - 1
            if int(rec["kind"][0]) != JOURNAL_LIVE and live_day > day_ms:
                recs = np.concatenate([rec, live])  # a late/revised day goes before the live one
            # else: the live day changed, finished (its final record), or a new day began
        self.apply((Change(st.key, at, (recs,)),), commit=False)
        for i, r in enumerate(recs):
            self._set_day(
                st,
                int(r["ts_ms"]),
                DayState(at + i, int(r["kind"]), int(r["digest"]), int(r["version"])),
            )
        if body and int(rec["kind"][0]) == JOURNAL_DAY:
            self._remember(st, at, int(rec["digest"][0]), body)

    def _replay_cached(self, st: StreamState, day: dt.date, last: dt.date) -> int:
        """Journal a run of consecutive cached days from ``day`` (at most ``REPLAY_DAYS``,
        up to ``last``) with one store write: a backfill or rebuild over the raw cache,
        where every day is final. Each record is what ``_record_final`` writes for a
        cached day (digest read once; a day already journaled with the same digest is
        skipped, a changed one is REVISED). Returns the days consumed; 0 when ``day`` is
        not cached or the journal ends with a live record (the day-by-day path keeps the
        live record last)."""
        store = st.store
        n = store.length
        if n and int(store.view(n - 1, n)["kind"][0]) == JOURNAL_LIVE:
            return 0
        ts: list[int] = []
        lens: list[int] = []
        digests: list[int] = []
        versions: list[int] = []
        flags: list[int] = []
        bodies: list[bytes] = []
        consumed = 0
        d = day
        while d <= last and consumed < REPLAY_DAYS:
            body = self._read_cached(st, d)
            if body is None:
                break
            consumed += 1
            day_ms = day_start_ms(d)
            d += dt.timedelta(days=1)
            digest = body_digest(body)
            prev = st.days.get(day_ms)
            if prev is not None and prev.kind == JOURNAL_DAY and prev.digest == digest:
                continue  # already in the journal (restart)
            ts.append(day_ms)
            lens.append(len(body))
            digests.append(digest)
            versions.append(prev.version + 1 if prev is not None else 1)
            flags.append(FLAG_REVISED if prev is not None and prev.kind == JOURNAL_DAY else 0)
            bodies.append(body)
        if ts:
            recs = np.zeros(len(ts), dtype=JOURNAL_DTYPE)
            recs["ts_ms"] = ts
            recs["body_len"] = lens
            recs["digest"] = np.array(digests, dtype=np.uint64)
            recs["http_status"] = 200
            recs["version"] = versions
            recs["kind"] = JOURNAL_DAY
            recs["src_offset"] = -1
            recs["flags"] = flags
            self.apply((Change(st.key, n, (recs,)),), commit=False)
            for i in range(len(ts)):
                self._set_day(st, ts[i], DayState(n + i, JOURNAL_DAY, digests[i], versions[i]))
                self._remember(st, n + i, digests[i], bodies[i])
            self.gap_days.labels(st.key).set(self._gaps(st))
        return consumed

    def _read_cached(self, st: StreamState, day: dt.date) -> bytes | None:
        """``cache.get`` with the year's directory computed once (pathlib per file is a
        good part of replaying 7,000 cached days)."""
        key = (st.symbol, st.side, day.year)
        base = self._year_dirs.get(key, "")
        if base == "":
            path = str(self.cache.path(st.symbol, st.side, day))
            base = path.rsplit("/", 1)[0]
            # Only when our name is the cache's own (else: cache.get for every day).
            self._year_dirs[key] = base = (
                base if path == f"{base}/{st.symbol}-{st.side}-{day:%Y%m%d}.json" else None
            )
        if base is None:
            return self.cache.get(st.symbol, st.side, day)
        try:
            with open(f"{base}/{st.symbol}-{st.side}-{day:%Y%m%d}.json", "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _remember(self, st: StreamState, offset: int, digest: int, body: bytes) -> None:
        old = self._recent.pop((st.key, offset), None)
        if old is not None:
            self._recent_bytes -= len(old[1])
        self._recent[(st.key, offset)] = (digest, body)
        self._recent_bytes += len(body)
        while self._recent_bytes > RECENT_BODY_BYTES and self._recent:
            oldest = next(iter(self._recent))  # dicts keep insertion order
            self._recent_bytes -= len(self._recent.pop(oldest)[1])

    def _set_day(self, st: StreamState, day_ms: int, state: DayState) -> None:
        prev = st.days.get(day_ms)
        st.gaps += (state.kind == JOURNAL_GAP) - (prev is not None and prev.kind == JOURNAL_GAP)
        st.days[day_ms] = state

    def _index(self, st: StreamState) -> None:
        """Rebuild the per-day index (and where to resume) from the committed journal."""
        recs = st.store.records
        for i, rec in enumerate(recs):
            self._set_day(
                st,
                int(rec["ts_ms"]),
                DayState(i, int(rec["kind"]), int(rec["digest"]), int(rec["version"])),
            )
        finals = [d for d, s in st.days.items() if s.kind in (JOURNAL_DAY, JOURNAL_GAP)]
        if finals:
            st.next_day = _date(max(finals)) + dt.timedelta(days=1)

    def _gaps(self, st: StreamState) -> int:
        return st.gaps

    def _body(self, st: StreamState, rec: np.void, offset: int) -> bytes:
        kind = int(rec["kind"])
        if kind == JOURNAL_GAP or int(rec["body_len"]) == 0:
            return b""
        digest = int(rec["digest"])
        recent = self._recent.get((st.key, offset))
        if recent is not None and recent[0] == digest and kind == JOURNAL_DAY:
            return recent[1]
        day = _date(int(rec["ts_ms"]))
        if kind == JOURNAL_LIVE:
            path = self.live_dir / f"{st.symbol}-{st.side}-{digest:016x}.json"
            with contextlib.suppress(FileNotFoundError):
                return path.read_bytes()
        body = self.cache.get(st.symbol, st.side, day)
        if body is not None and body_digest(body) == digest:
            return body
        with contextlib.suppress(FileNotFoundError):
            return self._version_path(st, day, digest).read_bytes()
        self.log.error(
            "%s: body of %s (digest %016x) is missing from the raw cache", st.key, day, digest
        )
        self.metrics.errors.labels("body_missing").inc()
        return b""

    def _version_path(self, st: StreamState, day: dt.date, digest: int) -> Path:
        return (
            self.versions_dir
            / st.symbol
            / st.side
            / f"{st.symbol}-{st.side}-{day:%Y%m%d}.{digest:016x}.json"
        )

    def _keep_version(self, st: StreamState, day: dt.date, body: bytes) -> None:
        path = self._version_path(st, day, body_digest(body))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, body, durable=True)

    # -- helpers ------------------------------------------------------------------------

    def _observe(self, result: FetchResult) -> None:
        self.clock.observe(getattr(result, "server_ms", None))

    def _budget_gauges(self) -> None:
        self.budget_requests.set(self.budget.requests_total)
        self.budget_wait.set(self.budget.wait_seconds_total)

    def _stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    async def _sleep(self, seconds: float) -> None:
        assert self.stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def commit(self) -> None:
        super().commit()
        for old in self.live_dir.glob("*.json"):
            if not self._live_referenced(old):
                with contextlib.suppress(OSError):
                    os.unlink(old)

    def _live_referenced(self, path: Path) -> bool:
        for st in self.streams.values():
            n = st.store.committed_length
            if n and path.name.startswith(f"{st.symbol}-{st.side}-"):
                tail = st.store.view(n - 1, n)[0]
                if int(tail["kind"]) == JOURNAL_LIVE and path.name.endswith(
                    f"{int(tail['digest']):016x}.json"
                ):
                    return True
        return False
