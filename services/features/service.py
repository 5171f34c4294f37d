"""Features service: every configured feature set over the resampler's bar stores.

Wiring::

    resampler feed ──FeedClient──▶ handle: "from bar X the bars of SYM/SIDE/TF now read R"
        │  per feature set on TF: the first bar that differs (x >= X), the engine's state at
        │  x (cached, else ``engine.state_at`` from the stored row x-1 — no replay), apply
        │  the closed bars, peek a provisional last one
        ▼
    Change(SYM/SIDE/TF.SET, from record x·(1+G): bar, its G feature records, bar, …)
        │  Service.apply, commit (on idle / every commit_interval_s)
        ▼
    feed: SYM/SIDE/TF.SET (kind FEATURES) ──▶ gateway (its second upstream)

A feature store (docs/FORMAT.md §11) holds, per bar of the upstream store, the bar record
itself and then its G feature records: a store is "bars joined with their features", so the
gateway, the consumer's Clone-pattern copy and every reader see a bar and its features change
together, in one commit, under one sequence number — never a bar with another bar's features.
It is a pure function of the upstream bars: equal, byte for byte, to ``layout.interleave`` of
``engine.compute`` over the bar store (tested). The stage keeps no other bar copy: the bars a
state needs (the set's ``lookback``) are read back from its own store.

Timeframes no set is computed on are followed (their upstream marks advance) and ignored.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter

from barstream.services.features import layout
from barstream.services.features.engine import Program, Stream, state_at
from barstream.services.features.spec import FeatureSet, from_config
from barstream.services.gateway.query import first_difference
from barstream.services.resampler.service import served_timeframes
from barstream.shared import protocol as p
from barstream.shared.alignment import PRESETS
from barstream.shared.config import Config
from barstream.shared.errors import UpstreamInvalid
from barstream.shared.header import StoreMeta
from barstream.shared.inbound import bars_problem
from barstream.shared.metrics import PREFIX
from barstream.shared.names import RejectedName, StreamNames
from barstream.shared.record import FLAG_PROVISIONAL, KIND_FEATURES, RECORD_DTYPE
from barstream.shared.service import Change, Changes, Service
from barstream.shared.sessions import Session, sessions_of
from barstream.shared.store import Store


def feature_key(symbol: str, side: str, timeframe: str, set_name: str) -> str:
    """The store key (and gateway topic) of a feature store: ``EUR-USD/BID/1h.core``."""
    return f"{symbol}/{side}/{timeframe}.{set_name}"


def feature_sets(config: Config) -> list[FeatureSet]:
    """The configured ``[[features]]`` sets (checked when the configuration was loaded)."""
    return [from_config(f) for f in config.features]


def feature_keys(config: Config) -> dict[str, FeatureSet]:
    """Every feature store key the configuration asks for → its set."""
    return {
        feature_key(symbol, side, tf, fs.name): fs
        for fs in feature_sets(config)
        for tf in fs.timeframes
        for symbol, side in config.streams()
    }


class Features(Service):
    name = "features"

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        self.alignment = PRESETS[config.resampler.alignment]
        self.sets = feature_sets(config)
        self.programs = {fs.name: Program.of(fs) for fs in self.sets}
        #: timeframe → the sets computed on it
        self.by_timeframe: dict[str, list[FeatureSet]] = {}
        for fs in self.sets:
            for tf in fs.timeframes:
                self.by_timeframe.setdefault(tf, []).append(fs)
        #: feature store key → the engine's state after the store's committed-to-engine bars
        self.streams: dict[str, Stream] = {}
        self._stores: dict[str, Store] = {}
        self._sessions: dict[str, list[Session] | None] = {}
        self.bars_out = Counter(
            PREFIX + "feature_bars_out",
            "Bars whose features were written, by timeframe and feature set.",
            ["timeframe", "feature_set"],
            registry=self.metrics.registry,
        )
        # Every configured store exists from the start (empty until bars come), so the
        # gateway serves each topic before its first bar, as it does bars.
        for key in feature_keys(config):
            self._store(key)

    def take_names(self) -> StreamNames:
        """Every store the resampler serves (1m and its cascade's timeframes); those no
        set is computed on are followed and ignored, not refused."""
        p_cfg = self.config.pipeline
        return StreamNames(p_cfg.symbols, p_cfg.sides, served_timeframes(self.config))

    async def main(self) -> None:
        if self.stores.pending():
            self.commit()  # stores just created: their ids survive a crash (gateway epochs)
        await self.follow_and_serve()

    def _store(self, key: str) -> Store:
        store = self._stores.get(key)
        if store is None:
            meta = StoreMeta.from_key(key, alignment=self.alignment.name, kind=KIND_FEATURES)
            store = self.stores.ensure(meta)
            self._stores[key] = store
        return store

    def sessions(self, symbol: str) -> list[Session] | None:
        if symbol not in self._sessions:
            sess = sessions_of(self.config.resampler.sessions.get(symbol, []))
            self._sessions[symbol] = list(sess) or None
        return self._sessions[symbol]

    def forget(self, stream: str) -> None:
        """A batch of ``stream`` raised: its sets' states start again from the stores."""
        prefix = stream + "."
        for key in [k for k in self.streams if k.startswith(prefix)]:
            del self.streams[key]

    def handle(self, batch: p.Batch, records: np.ndarray, attachments: list[bytes]) -> Changes:
        """From bar ``batch.start`` on, the resampler's ``SYM/SIDE/TF`` reads ``records``:
        every set on TF rewrites its store from the first bar that differs."""
        try:
            meta = self.upstream_names.check(batch.stream)
        except RejectedName as e:
            self.metrics.rejected.labels("feed_client", e.reason).inc()
            self.reject(batch, e)
            return ()
        sets = self.by_timeframe.get(meta.timeframe)
        if not sets:
            return ()
        out: list[Change] = []
        for fs in sets:
            change = self._change(meta, fs, batch, records)
            if change is not None:
                out.append(change)
        return out

    def _change(
        self, meta: StoreMeta, fs: FeatureSet, batch: p.Batch, records: np.ndarray
    ) -> Change | None:
        key = feature_key(meta.symbol, meta.side, meta.timeframe, fs.name)
        store = self._store(key)
        g1 = layout.stride(fs)
        bars = layout.bars_of(store.records, fs)
        n = len(bars)
        start = batch.start
        if start > n:
            raise UpstreamInvalid(
                f"starts at bar {start}, past the {n} bars of {key}", stream=batch.stream
            )
        why = bars_problem(bars[max(0, start - 1) : start], records)
        if why is not None:
            raise UpstreamInvalid(why, stream=batch.stream, offset=start)
        same = first_difference(bars[start : start + len(records)], records)
        if same == len(records) and start + same == n:
            return None  # the store already reads so
        x = start + same
        new = records[same:]
        stream = self._stream_at(key, fs, store, bars, x, meta.symbol)
        k = len(new)
        if k and int(new["flags"][-1]) & FLAG_PROVISIONAL:
            k -= 1  # a provisional last bar is peeked: the state stays at the closed bars
        out = np.empty(len(new) * g1, RECORD_DTYPE)
        if k:
            layout.interleave(fs, new[:k], stream.apply(new[:k]), out[: k * g1])
        if k < len(new):
            layout.interleave(fs, new[k:], stream.peek(new[k:]), out[k * g1 :])
        self.streams[key] = stream
        counter = self.bars_out.labels(meta.timeframe, fs.name)
        counter.inc(len(new))
        return Change(key, x * g1, (out,))

    def _stream_at(
        self, key: str, fs: FeatureSet, store: Store, bars: np.ndarray, x: int, symbol: str
    ) -> Stream:
        """The engine state after bars 0 … x-1 of ``store``: the cached one when it is there
        (moved on over unchanged stored bars), else rebuilt from the stored row x-1."""
        cached = self.streams.get(key)
        if cached is not None and cached.offset <= x:
            if cached.offset < x:
                cached.apply(np.ascontiguousarray(bars[cached.offset : x]))
            return cached
        prog = self.programs[fs.name]
        row = layout.values_of(store.records, fs, x - 1) if x > 0 else None
        return state_at(prog, bars, row, x, self.sessions(symbol))
