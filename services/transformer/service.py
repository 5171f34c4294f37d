"""Transformer service: the downloader's fetch journal → decoded 1-minute records.

Wiring: follow the downloader's feed (streams ``SYMBOL/SIDE/fetch``, one journal record per
fetched day, its raw body attached) → ``bulk.decode_days`` (many days at once, each the
same as ``decode_candles``) → one store per
(symbol, side), ``SYMBOL/SIDE/days``: the decoded day versions in journal order → serve it.

The store is a pure function of the journal: the decoded records of every valid journal
record, in journal order. A record's ``src_offset`` is its journal offset, so a rewind of
the journal at X truncates this store at the first record with ``src_offset >= X``.

A payload that fails validation stores nothing and *holds* its (symbol, side): later days
of that stream are not stored until a good version of the bad day arrives (the downloader
re-fetches it), the journal marks the day as a gap (the user skipped it: ``barstream
skip-day``) or the journal rewinds over it; then the stream resumes from the record after
the bad one (the upstream resends it), so the final store is the same as if the bad
payload had never been published. Other streams keep flowing. Held streams show in logs,
in ``barstream_held_streams`` (also right after a restart), in the checkpoint's
``state.held`` (day, journal offset, error, field, index: what ``barstream rebuild`` and
``verify`` report) and in ``status``.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np

from barstream.services.transformer.decode_pool import DecodeHelper, Item
from barstream.shared import protocol as p
from barstream.shared.config import Config
from barstream.shared.errors import PayloadInvalid, UpstreamInvalid
from barstream.shared.header import StoreMeta
from barstream.shared.metrics import TransformerMetrics, stream_labels
from barstream.shared.ratelog import MAX_NEW_PER_INTERVAL, MAX_PEERS, RateLimitedLog
from barstream.shared.record import (
    JOURNAL_DAY,
    JOURNAL_GAP,
    JOURNAL_LIVE,
    KIND_JOURNAL,
)
from barstream.shared.service import Change, Changes, Service


def _day(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date().isoformat()


def version_cut(_key: str, records: np.ndarray) -> int:
    """Never split one day version (records sharing a ``src_offset``) across batches."""
    src = records["src_offset"]
    last = src[-1]
    i = int(np.searchsorted(src, last, side="left"))  # src_offset is non-decreasing
    return i if i > 0 else len(records)


class Transformer(Service):
    name = "transformer"

    def __init__(self, config: Config, *, drain: bool = False, serve_metrics: bool = True) -> None:
        super().__init__(config, drain=drain, serve_metrics=serve_metrics)
        held = self.stores.state.get("held", {})
        #: stream → {"day_ms", "offset", "error"}: a bad payload holds its stream.
        self.held: dict[str, dict[str, object]] = dict(held) if isinstance(held, dict) else {}
        self.payloads_ok = 0
        self.payloads_bad = 0
        metrics = TransformerMetrics(self.metrics)
        self.held_gauge = metrics.held_streams
        for stream in self.held:
            self.held_gauge.labels(*stream_labels(stream, strict=False)).set(1)
        self.payload_errors = self.metrics.errors.labels("payload_invalid")
        # A cache full of bad days must not be a log line per day: the first per stream in
        # full, then a summary per stream every 10 s (every one is counted above).
        # Its peers are the configured streams (names are checked before they get here):
        # each stream's first rejection is logged in full, however many streams have one
        # at once (84 in the full universe) — the operator needs the file and day of each.
        n_streams = len(config.streams())
        self.payload_log = RateLimitedLog(
            self.log,
            "rejected journal records",
            level=logging.ERROR,
            max_peers=max(MAX_PEERS, n_streams),
            max_new=max(MAX_NEW_PER_INTERVAL, n_streams),
        )
        #: Helper process decoding part of each large batch on the other core (it splits
        #: the work between the two processes); one that hangs or dies is killed, counted
        #: and restarted, its work decoded here (decode_pool).
        t = config.transformer
        restarts = metrics.decode_helper_restarts
        self.helper = DecodeHelper(
            answer_timeout_s=t.decode_helper_timeout_s,
            timeout_per_day_s=t.decode_helper_timeout_per_day_s,
            on_restart=lambda reason: restarts.labels(reason).inc(),
        )

    async def main(self) -> None:
        await self.follow_and_serve(cut=version_cut)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.helper.close()

    def decode_batch(
        self, symbol: str, side: str, start: int, journal: np.ndarray, bodies: list[bytes]
    ) -> dict[int, np.ndarray | PayloadInvalid]:
        """Decode every day of a journal batch: {index in batch: records or the error}.
        Large batches are shared with the helper process (decoding is pure: the same
        records whichever process decodes a day)."""
        items: list[Item] = []  # day_ms, live, src_offset, body
        index: list[int] = []  # each item's index in the batch
        for i, rec in enumerate(journal):
            kind_i = int(rec["kind"])
            if kind_i in (JOURNAL_DAY, JOURNAL_LIVE):
                body = bodies[i] if i < len(bodies) else b""
                index.append(i)
                items.append((int(rec["ts_ms"]), kind_i == JOURNAL_LIVE, start + i, body))
        decoded = self.helper.decode(symbol, side, items)
        return dict(zip(index, decoded, strict=True))

    def handle(self, batch: p.Batch, journal: np.ndarray, bodies: list[bytes]) -> Changes:
        """From journal offset ``batch.start`` on, the journal now reads ``journal``: this
        store, from the first record decoded from there, reads the valid days' records."""
        meta = self.upstream_meta(batch, "fetch")
        if meta is None:
            return ()
        if batch.kind != KIND_JOURNAL:
            self.reject(batch, UpstreamInvalid("not a fetch journal", stream=batch.stream))
            return ()
        symbol, side = meta.symbol, meta.side
        store = self.stores.ensure(StoreMeta(symbol, side, "days"))
        src = store.records["src_offset"]
        cut = int(np.searchsorted(src, batch.start, side="left"))
        hold = self.held.get(batch.stream)
        if hold is not None and batch.start <= int(str(hold["offset"])):
            self._unhold(batch.stream, "journal rewound over the bad day")
            hold = None
        parts: list[np.ndarray] = []
        results = self.decode_batch(symbol, side, batch.start, journal, bodies)
        i = -1
        while i + 1 < len(journal):
            i += 1
            rec = journal[i]
            offset = batch.start + i
            day_ms = int(rec["ts_ms"])
            if i not in results:  # a gap or empty day carries no records
                if (
                    hold is not None
                    and int(rec["kind"]) == JOURNAL_GAP
                    and day_ms == int(str(hold["day_ms"]))
                ):
                    # The held day is a gap now (the user skipped it): move past it.
                    why = f"{_day(day_ms)} is a gap (skipped) at journal offset {offset}"
                    nxt = self._release(batch, hold, i, why)
                    hold = None
                    if nxt is None:
                        break
                    if nxt < i:
                        i = nxt - 1
                continue
            decoded = results[i]
            if isinstance(decoded, PayloadInvalid):
                e = decoded
                self.payloads_bad += 1
                self.payload_errors.inc()
                self.payload_log.event(
                    "",
                    batch.stream,
                    f"journal record {offset}: {e}",
                    f"rejected journal record {offset}: {e}",
                )
                if hold is None:
                    self._hold(batch.stream, day_ms, offset, e)
                    hold = self.held[batch.stream]
                continue
            self.payloads_ok += 1
            if hold is not None:
                if day_ms == int(str(hold["day_ms"])):
                    # A good version of the held day: resume after the bad record.
                    why = f"good version of {_day(day_ms)} at journal offset {offset}"
                    nxt = self._release(batch, hold, i, why)
                    hold = None
                    if nxt is None:
                        break
                    if nxt < i:
                        i = nxt - 1
                        continue
                else:
                    continue  # held: later days wait for the bad day
            parts.append(decoded)
        return (Change(store.meta.key, cut, parts),)

    def _release(self, batch: p.Batch, hold: dict[str, object], i: int, why: str) -> int | None:
        """Release the stream held at ``hold``: the records after the bad one are processed
        now, in journal order. Returns the batch index to go on from (``i``: nothing was
        held in between), or None when they are before this batch: the upstream resends
        them (this batch stops here)."""
        resume = int(str(hold["offset"])) + 1
        self._unhold(batch.stream, why)
        if resume >= batch.start + i:
            return i
        if resume >= batch.start:
            # The held records are in this very batch: go back to them (asking the upstream
            # to resend would be a no-op — we are not past them yet — and they would be lost).
            return resume - batch.start
        assert self.upstream is not None
        self.upstream.request_resend(batch.stream, resume)
        return None

    def _hold(self, stream: str, day_ms: int, offset: int, e: PayloadInvalid) -> None:
        error = e.args[0] if e.args else str(e)  # where, field and what; not the hint
        self.held[stream] = {
            "day_ms": day_ms,
            "offset": offset,
            "error": error,
            "field": e.field,
            "index": e.index,
        }
        self.stores.state["held"] = dict(self.held)
        self.held_gauge.labels(*stream_labels(stream)).set(1)
        self.log.error(
            "holding %s at journal offset %d (%s) until a good payload arrives",
            stream,
            offset,
            _day(day_ms),
        )

    def _unhold(self, stream: str, why: str) -> None:
        self.held.pop(stream, None)
        self.stores.state["held"] = dict(self.held)
        self.held_gauge.labels(*stream_labels(stream)).set(0)
        self.log.info("released %s: %s", stream, why)

    def __repr__(self) -> str:
        base = super().__repr__()[:-1]
        return (
            f"{base} ok={self.payloads_ok} bad={self.payloads_bad} held={len(self.held)} "
            f"helper={self.helper.days} share={self.helper.share:.2f}>"
        )
