"""Aggregator service: the transformer's decoded day versions → the canonical 1m series.

Wiring: follow the transformer's feed (``SYMBOL/SIDE/days``: day versions in journal order,
never split across batches) → ``aggregate.merge`` → one store per (symbol, side),
``SYMBOL/SIDE/1m`` → serve it.

The canonical series holds, for every UTC day, the minutes of the latest version of that
day, in time order — a pure function of the transformer's store. New days append; a
re-polled live day rewrites from its first changed minute (usually the provisional last
one); a revised or late day rewrites from its first changed minute, wherever it is. Each
rewrite is one "from offset X" update downstream, never a full resend.
"""

from __future__ import annotations

import asyncio

import numpy as np
from prometheus_client import Counter

from services.aggregator.aggregate import merge
from shared import protocol as p
from shared.config import Config
from shared.feed import FeedClient
from shared.service import Service
from shared.store import StoreMeta


class Aggregator(Service):
    name = "aggregator"

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        self.rewinds_out = Counter(
            "barstream_rewinds",
            "Rewrites of already committed history (provisional updates, revisions, late days).",
            ["stream"],
            registry=self.metrics.registry,
        )

    async def main(self) -> None:
        server = self.serve_feed()
        self.upstream = FeedClient(
            self.ctx,
            self.endpoints.upstream,
            self.stores.upstream,
            self.apply,
            name=self.name,
            metrics=self.metrics,
            on_idle=self.idle,
        )
        serving = asyncio.create_task(server.run())
        following = asyncio.create_task(self.upstream.run(until_caught_up=self.drain))
        if self.drain:
            await following
            self.commit()
            server.done = True
            await server.wait_drained()
            server.close()
            await serving
            return
        await self.serve_until_stopped(serving, following)

    async def idle(self) -> None:
        self.maybe_commit(idle=True)

    async def apply(self, batch: p.Batch, records: np.ndarray, _bodies: list[bytes]) -> None:
        """From transformer offset ``batch.start`` on, its store now reads ``records``."""
        symbol, side, kind = batch.stream.split("/")
        if kind != "days":
            self.log.warning("ignoring stream %s: not decoded day versions", batch.stream)
            return
        store = self.stores.ensure(StoreMeta(symbol, side, "1m"))
        x, new = merge(store.records, records, batch.start)
        if x >= store.length and not len(new):
            return
        if x < store.committed_length:
            self.rewinds_out.labels(store.meta.key).inc()
        store.write(x, new)
        self.stores.touch(store.meta.key)
        self.metrics.records_written.inc(len(new))
        self.maybe_commit()
