"""Resampler service: the canonical 1m series → every configured timeframe.

Wiring: follow the aggregator's feed (``SYMBOL/SIDE/1m``) → keep a replica of it (the
cascade needs the minutes of a rewound bar, and the gateway is served 1m from here too) →
``cascade.Cascade.update`` per (symbol, side) → one store per (symbol, side, timeframe),
``SYMBOL/SIDE/5m`` … ``SYMBOL/SIDE/1Y`` → serve all of them.

Each timeframe's store equals ``resample.resample_all`` over the 1m store (tested byte for
byte): a pure function of the upstream. A new minute costs O(number of timeframes); an
upstream rewind at X recomputes, per timeframe, from the first bar whose minutes reach X.
The open bar of every timeframe is flagged provisional until its window has closed.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from prometheus_client import Counter

from barstream.services.resampler.cascade import Cascade
from barstream.services.resampler.resample import M1, plan
from barstream.shared import protocol as p
from barstream.shared.alignment import PRESETS
from barstream.shared.config import Config
from barstream.shared.errors import UpstreamInvalid
from barstream.shared.header import StoreMeta
from barstream.shared.inbound import bars_problem
from barstream.shared.metrics import ResamplerMetrics, stream_labels
from barstream.shared.record import FLAG_PROVISIONAL
from barstream.shared.service import Change, Changes, Service
from barstream.shared.sessions import sessions_of
from barstream.shared.store import Store
from barstream.shared.timeframe import Timeframe


def served_timeframes(config: Config) -> set[str]:
    """The timeframes of the stores the resampler serves: 1m and every one its cascade
    makes for the configured symbols (the configured ones and the steps they need)."""
    rc = config.resampler
    alignment = PRESETS[rc.alignment]
    tfs = {"1m"}
    for symbol in config.pipeline.symbols:
        sessions = sessions_of(rc.sessions.get(symbol, [])) or None
        tfs.update(str(tf) for tf in plan(rc.timeframes, alignment, sessions))
    return tfs


class Resampler(Service):
    name = "resampler"

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        rc = config.resampler
        self.alignment = PRESETS[rc.alignment]
        self.timeframes = [Timeframe.parse(t) for t in rc.timeframes]
        self.cascades: dict[str, Cascade] = {}
        self._stores: dict[tuple[str, str, Timeframe], Store] = {}
        self._bars_out: dict[Timeframe, Counter] = {}
        self.rmetrics = ResamplerMetrics(self.metrics)
        self.bars_out = self.rmetrics.bars_out

    async def main(self) -> None:
        await self.follow_and_serve()

    def cascade(self, symbol: str, side: str) -> Cascade:
        key = f"{symbol}/{side}"
        c = self.cascades.get(key)
        if c is None:
            m1 = self._store(symbol, side, M1)
            sessions = sessions_of(self.config.resampler.sessions.get(symbol, []))

            def bars(tf: Timeframe) -> np.ndarray:
                return self._store(symbol, side, tf).records

            c = Cascade(
                self.timeframes, self.alignment, sessions or None, m1=lambda: m1.records, bars=bars
            )
            for tf in c.timeframes:
                self._store(symbol, side, tf)
            self.cascades[key] = c
        return c

    def forget(self, stream: str) -> None:
        """A batch of ``stream`` raised in the cascade: rebuild it from the stores."""
        symbol, _, rest = stream.partition("/")
        side = rest.partition("/")[0]
        self.cascades.pop(f"{symbol}/{side}", None)

    def _store(self, symbol: str, side: str, tf: Timeframe) -> Store:
        # Looked up a few times per timeframe per batch: keep the Store (a StoreSet never
        # replaces one it holds).
        store = self._stores.get((symbol, side, tf))
        if store is None:
            store = self.stores.ensure(StoreMeta(symbol, side, str(tf), self.alignment.name))
            self._stores[(symbol, side, tf)] = store
        return store

    def handle(self, batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> Changes:
        """From 1m offset ``batch.start`` on, the aggregator's store now reads ``records``:
        the 1m replica and every timeframe, each rewritten only from its first changed bar."""
        meta = self.upstream_meta(batch, "1m")
        if meta is None:
            return ()
        symbol, side = meta.symbol, meta.side
        m1 = self._store(symbol, side, M1)
        why = bars_problem(
            m1.view(max(0, min(batch.start, m1.length) - 1), min(batch.start, m1.length)), records
        )
        if why is not None:
            self.metrics.rejected.labels("feed_client", "bad-records").inc()
            self.reject(batch, UpstreamInvalid(why, stream=batch.stream, offset=batch.start))
            return ()
        cascade = self.cascade(symbol, side)
        changes = cascade.update(batch.start, records)  # reads the stores *before* the update
        out = [Change(self._store(symbol, side, M1).meta.key, batch.start, (records,), diff=True)]
        for tf_i, (x, new) in changes.items():
            out.append(Change(self._store(symbol, side, tf_i).meta.key, x, (new,), diff=True))
            counter = self._bars_out.get(tf_i)
            if counter is None:
                counter = self._bars_out[tf_i] = self.bars_out.labels(str(tf_i))
            counter.inc(len(new))
        return out

    def update_store_gauges(self, keys: Collection[str] | None = None) -> None:
        super().update_store_gauges(keys)
        stores = self.stores.stores
        for key in stores if keys is None else keys:
            store = stores.get(key)
            if store is None:
                continue
            n = store.committed_length
            if not n:
                continue
            tail = store.view(max(0, n - 2), n)
            closed = tail[(tail["flags"] & FLAG_PROVISIONAL) == 0]
            if len(closed):
                self.rmetrics.last_closed_bar_time.labels(*stream_labels(key)).set(
                    int(closed["ts_ms"][-1]) / 1000
                )
