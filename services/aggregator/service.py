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

import numpy as np
from prometheus_client import Counter

from barstream.services.aggregator.aggregate import merge
from barstream.shared import protocol as p
from barstream.shared.config import Config
from barstream.shared.header import StoreMeta
from barstream.shared.record import FLAG_LIVE, RECORD_DTYPE
from barstream.shared.service import Service
from barstream.shared.timeframe import DAY_MS


def append_only(
    last_ts_ms: int | None, incoming: np.ndarray, base_offset: int, *, in_place: bool = False
) -> np.ndarray | None:
    """``merge``'s result when ``incoming`` only appends: every day version in it is a new
    day after the canonical series' last minute (``last_ts_ms``; None when empty), each in
    one UTC day with strictly increasing minutes — the shape of a backfill or rebuild.
    Then nothing is replaced, so the canonical records are the incoming ones with
    ``src_offset`` = their transformer offset, ``src_count`` = 1 and FLAG_LIVE dropped (as
    ``merge`` does; ``tests/unit/test_rebuild_fast_paths.py`` holds the two equal), appended:
    exactly ``merge(canonical, incoming, base_offset)`` = ``(len(canonical), R)``, without
    its per-day work. Returns None for anything else (``merge`` handles it, and raises the
    precise error for an invalid version). ``in_place``: write the two fields into
    ``incoming`` itself (when it is writable) instead of a copy."""
    n = len(incoming)
    if not n:
        return None
    ts = incoming["ts_ms"]
    if last_ts_ms is not None and int(ts[0]) // DAY_MS <= last_ts_ms // DAY_MS:
        return None  # touches a day the canonical series already has
    if n > 1:
        if not bool(np.all(ts[1:] > ts[:-1])):
            return None
        day = ts // DAY_MS
        src = incoming["src_offset"]
        # A new day version starts exactly where a new day starts: one version per day,
        # each within its day (minutes increase, so days only move forward).
        if not np.array_equal(src[1:] != src[:-1], day[1:] != day[:-1]):
            return None
    if in_place and incoming.flags.writeable and incoming.dtype == RECORD_DTYPE:
        out = incoming
    else:
        out = np.array(incoming, dtype=RECORD_DTYPE, copy=True)
    out["src_offset"] = np.arange(base_offset, base_offset + n, dtype=np.int64)
    out["src_count"] = 1
    out["flags"] &= np.uint16(0xFFFF ^ FLAG_LIVE)  # as merge: provenance is not canonical
    return out


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
        await self.follow_and_serve(self.apply)

    async def apply(self, batch: p.Batch, records: np.ndarray, _bodies: list[bytes]) -> None:
        """From transformer offset ``batch.start`` on, its store now reads ``records``."""
        symbol, side, kind = batch.stream.split("/")
        if kind != "days":
            self.log.warning("ignoring stream %s: not decoded day versions", batch.stream)
            return
        store = self.stores.ensure(StoreMeta(symbol, side, "1m"))
        n = store.length
        last_ts = int(store.view(n - 1, n)["ts_ms"][0]) if n else None
        # The batch's records are a frame received for us alone: fill in the two tail
        # fields there rather than copying 4 MiB per batch.
        appended = append_only(last_ts, records, batch.start, in_place=True)
        if appended is not None:
            x, new = n, appended
        else:
            x, new = merge(store.records, records, batch.start)
        if x >= store.length and not len(new):
            return
        if x < store.committed_length:
            self.rewinds_out.labels(store.meta.key).inc()
        store.write(x, new)
        self.stores.touch(store.meta.key)
        self.metrics.records_written.inc(len(new))
        self.maybe_commit()
