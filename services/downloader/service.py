"""Downloader service: Dukascopy's JSON API → raw cache + fetch journal → feed.

Wiring: for every configured (symbol, side) the fetch schedule (``fetcher.py``) walks the
days from ``pipeline.start_date`` over the raw cache (``raw_cache.py``) and the ``Source``
(``source.py``: one request budget, one retry loop), then follows the live day; the
journal (``journal.py``, pure) decides the records each outcome writes; this service
applies them to the stream's store ``SYMBOL/SIDE/fetch`` (``Service.apply``), commits, and
serves the journals with each record's raw body attached (kept in memory for recent days,
else read back from the raw cache by digest). Journal rules: ``journal.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from barstream.services.downloader.fetcher import Clock, Fetcher, StreamState, date_of
from barstream.services.downloader.instruments import cached_starts
from barstream.services.downloader.journal import Entry, Journal, first_unsealed
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.source import HttpSource, RequestBudget, Source
from barstream.shared.config import Config
from barstream.shared.errors import StoreCorrupt
from barstream.shared.header import HEADER_SIZE, StoreMeta
from barstream.shared.metrics import DownloaderMetrics
from barstream.shared.record import (
    JOURNAL_DAY,
    JOURNAL_GAP,
    JOURNAL_LIVE,
    KIND_JOURNAL,
    RECORD_SIZE,
)
from barstream.shared.service import Change, Service

#: Bytes of raw bodies per feed batch at most (a batch never splits a record from its body).
BATCH_BODY_BYTES = 2 << 20
#: Bodies of recently journaled days kept in memory for the feed's attachments (bytes at
#: most): a backfill's bodies are sent right after their commit, without reading the raw
#: cache again. Older bodies are read back from the raw cache (and their digest checked).
RECENT_BODY_BYTES = 32 << 20


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
        clock = Clock()
        budget = RequestBudget(d.requests_per_second, d.burst)
        self.source: Source = source or HttpSource.from_config(d, budget)
        self.cache = RawCache(
            Path(config.pipeline.data_dir) / "raw",
            today=clock.today,
            live=self.stores.root / "live",
        )
        self.fetch_metrics = DownloaderMetrics(self.metrics)
        if isinstance(self.source, HttpSource) and self.source.on_failure is None:
            self.source.on_failure = self._count_failure
        if isinstance(self.source, HttpSource):  # history starts of cached metadata too
            symbols = [symbol for symbol, _ in config.streams()]
            starts = cached_starts(self.cache.root, symbols, d.history_start)
            self.source.settings = dataclasses.replace(self.source.settings, history_start=starts)
        self.fetcher = Fetcher(
            self, config, self.source, self.cache, clock, budget, self.fetch_metrics
        )
        self.streams: dict[str, StreamState] = {}
        for symbol, side in config.streams():
            store = self.stores.ensure(StoreMeta(symbol, side, "fetch", kind=KIND_JOURNAL))
            bad = first_unsealed(store.records)
            if bad is not None:
                raise StoreCorrupt(
                    str(store.path),
                    f"journal record byte 63 is not the CRC-8 of bytes 0-62 (damaged on disk): "
                    f"byte {HEADER_SIZE + bad * RECORD_SIZE} of the file",
                    offset=bad,
                )
            key = store.meta.key
            self.streams[key] = StreamState(symbol, side, key, Journal(store.records))
            self.fetcher.gauges(self.streams[key])  # gaps known from before a restart
        #: (stream, journal offset) → (digest, body) of recently journaled days.
        self._recent: dict[tuple[str, int], tuple[int, bytes]] = {}
        self._recent_bytes = 0

    async def main(self) -> None:
        server = self.serve_feed(attachments=self.attachments, cut=self.cut)
        # One task for every stream's walk: a bounded run (end_date) ends when the last
        # stream's walk does, not the first (serve_while stops at the first task to end).
        walks = asyncio.create_task(self._follow_all())
        await self.serve_while(server, walks)

    async def _follow_all(self) -> None:
        await asyncio.gather(*(self.fetcher.follow(st) for st in self.streams.values()))

    def _count_failure(self, kind: str) -> None:
        """A failed HTTP attempt (the source's ``on_failure``): counted by reason; a body
        over ``downloader.max_body_bytes`` is also an error (``oversized_body``)."""
        self.fetch_metrics.attempt_failures.labels(kind).inc()
        if kind == "oversized":
            self.fetch_metrics.errors.labels("oversized_body").inc()

    # -- the fetch schedule's host ------------------------------------------------------

    def write(self, st: StreamState, entry: Entry | None) -> None:
        """Apply a journal entry; its final days' bodies are kept for the attachments."""
        if entry is None:
            return
        self.apply((Change(st.key, entry.start, (entry.records,)),), commit=False)
        for i, body in enumerate(entry.bodies):
            if body:
                self._remember(st.key, entry.start + i, int(entry.records["digest"][i]), body)

    def stopped(self) -> bool:
        return self.stopping is not None and self.stopping.is_set()

    async def sleep(self, seconds: float) -> None:
        assert self.stopping is not None
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as the awaited event completes (the task then never ends at stop).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    def commit(self) -> None:
        """Commit, then drop the live bodies no committed journal tail names any more."""
        super().commit()
        keep = []
        for st in self.streams.values():
            store = self.stores.stores[st.key]
            n = store.committed_length
            if n:
                tail = store.view(n - 1, n)[0]
                if int(tail["kind"]) == JOURNAL_LIVE:
                    keep.append((st.symbol, st.side, int(tail["digest"])))
        self.cache.prune_live(keep)

    # -- the feed's attachments ---------------------------------------------------------

    def attachments(self, key: str, start: int, records: np.ndarray) -> list[bytes]:
        st = self.streams[key]
        return [self._body(st, rec, start + i) for i, rec in enumerate(records)]

    @staticmethod
    def cut(_key: str, records: np.ndarray) -> int:
        sizes = np.cumsum(records["body_len"])
        return max(1, int(np.searchsorted(sizes, BATCH_BODY_BYTES, side="right")))

    def _body(self, st: StreamState, rec: np.void, offset: int) -> bytes:
        kind = int(rec["kind"])
        if kind == JOURNAL_GAP or int(rec["body_len"]) == 0:
            return b""
        digest = int(rec["digest"])
        recent = self._recent.get((st.key, offset))
        if recent is not None and recent[0] == digest and kind == JOURNAL_DAY:
            return recent[1]
        day = date_of(int(rec["ts_ms"]))
        body = self.cache.body(st.symbol, st.side, day, digest, live=kind == JOURNAL_LIVE)
        if body is not None:
            return body
        self.log.error(
            "%s: body of %s (digest %016x) is missing from the raw cache", st.key, day, digest
        )
        self.metrics.errors.labels("body_missing").inc()
        return b""

    def _remember(self, key: str, offset: int, digest: int, body: bytes) -> None:
        old = self._recent.pop((key, offset), None)
        if old is not None:
            self._recent_bytes -= len(old[1])
        self._recent[(key, offset)] = (digest, body)
        self._recent_bytes += len(body)
        while self._recent_bytes > RECENT_BODY_BYTES and self._recent:
            oldest = next(iter(self._recent))  # dicts keep insertion order
            self._recent_bytes -= len(self._recent.pop(oldest)[1])
