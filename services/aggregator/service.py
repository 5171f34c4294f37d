"""Aggregator service: the transformer's decoded day versions → the canonical 1m series.

Wiring: follow the transformer's feed (``SYMBOL/SIDE/days``: day versions in journal order,
never split across batches) → ``aggregate.append_only`` / ``aggregate.merge`` → one store
per (symbol, side), ``SYMBOL/SIDE/1m`` → serve it.

The canonical series holds, for every UTC day, the minutes of the latest version of that
day, in time order — a pure function of the transformer's store. New days append; a
re-polled live day rewrites from its first changed minute (usually the provisional last
one); a revised or late day rewrites from its first changed minute, wherever it is. Each
rewrite is one "from offset X" update downstream, never a full resend.
"""

from __future__ import annotations

import numpy as np

from barstream.services.aggregator.aggregate import append_only, merge
from barstream.shared import protocol as p
from barstream.shared.errors import UpstreamInvalid
from barstream.shared.header import StoreMeta
from barstream.shared.inbound import bars_problem
from barstream.shared.service import Change, Changes, Service


class Aggregator(Service):
    name = "aggregator"

    async def main(self) -> None:
        await self.follow_and_serve()

    def handle(self, batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> Changes:
        """From transformer offset ``batch.start`` on, its store now reads ``records``."""
        meta = self.upstream_meta(batch, "days")
        if meta is None:
            return ()
        why = bars_problem(records[:0], records, ordered=False)
        if why is not None:
            self.metrics.rejected.labels("feed_client", "bad-records").inc()
            self.reject(batch, UpstreamInvalid(why, stream=batch.stream, offset=batch.start))
            return ()
        store = self.stores.ensure(StoreMeta(meta.symbol, meta.side, "1m"))
        n = store.length
        last_ts = int(store.view(n - 1, n)["ts_ms"][0]) if n else None
        # The batch's records are a frame received for us alone: fill in the two tail
        # fields there rather than copying 4 MiB per batch.
        appended = append_only(last_ts, records, batch.start, in_place=True)
        if appended is not None:
            return (Change(store.meta.key, n, (appended,)),)
        try:
            x, new = merge(store.records, records, batch.start)
        except UpstreamInvalid as e:
            self.reject(batch, e)
            return ()
        return (Change(store.meta.key, x, (new,)),)
