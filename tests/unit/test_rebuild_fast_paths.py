"""The rebuild's fast paths give exactly what the general paths give.

- aggregator: ``append_only`` (a batch of new days after the canonical end) equals
  ``aggregate.merge``, and declines everything else;
- store: ``append_parts`` / ``write_parts`` (one vectored write) equal ``append`` of the
  concatenation, byte for byte, also across file growth (allocated with fallocate);
- transformer: the decode helper process returns the same records as ``decode_candles``,
  and a day it cannot decode is decoded again by the transformer (the exact error).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from barstream.fake.encoding import encode_candles
from barstream.fake.generators import RandomWalkGenerator
from barstream.services.aggregator.aggregate import append_only, merge
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.decode_pool import DecodeHelper
from barstream.services.transformer.transform import decode_candles
from barstream.shared.errors import PayloadInvalid, UpstreamInvalid
from barstream.shared.header import StoreMeta
from barstream.shared.record import (
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    RECORD_DTYPE,
    RECORD_SIZE,
)
from barstream.shared.store import GROW_MIN_BYTES, Store
from barstream.shared.timeframe import DAY_MS
from tests.support.wait import wait_for

START = dt.date(2024, 3, 4)


def _bodies(days: int) -> list[tuple[int, bytes]]:
    gen = RandomWalkGenerator(seed=7)
    out = []
    for i in range(days):
        day = START + dt.timedelta(days=i)
        body = encode_candles(gen.day("EUR-USD", "BID", day), empty_timestamp_ms=day_start_ms(day))
        out.append((day_start_ms(day), body))
    return out


def _versions(days: list[tuple[int, bytes]], first_offset: int) -> np.ndarray:
    parts = [
        decode_candles(
            body, symbol="EUR-USD", side="BID", day_ms=d, live=False, src_offset=first_offset + i
        )
        for i, (d, body) in enumerate(days)
    ]
    return np.concatenate(parts)


def test_append_only_equals_merge_on_new_days() -> None:
    days = _bodies(12)
    first = _versions(days[:5], 0)
    rest = _versions(days[5:], 5)
    canonical = np.zeros(0, RECORD_DTYPE)
    for incoming, base in ((first, 0), (rest, len(first))):
        expected_x, expected = merge(canonical, incoming, base)
        last = int(canonical["ts_ms"][-1]) if len(canonical) else None
        got = append_only(last, incoming, base)
        assert got is not None
        mine = incoming.copy()
        in_place = append_only(last, mine, base, in_place=True)
        assert in_place is mine and mine.tobytes() == got.tobytes()
        assert expected_x == len(canonical)
        assert got.tobytes() == expected.tobytes()
        canonical = np.concatenate([canonical, got])


def test_append_only_declines_what_is_not_a_pure_append() -> None:
    days = _bodies(4)
    batch = _versions(days, 0)
    last_day_ts = int(batch["ts_ms"][-1])
    # a day the canonical series already has
    assert append_only(last_day_ts, batch, 0) is None
    # two versions of one day in the batch (a re-poll)
    one = _versions(days[:1], 0)
    again = one.copy()
    again["src_offset"] = 1
    assert append_only(None, np.concatenate([one, again]), 0) is None
    # a version spanning midnight
    spans = batch.copy()
    spans["src_offset"] = 0
    assert append_only(None, spans, 0) is None
    # minutes not increasing
    back = batch.copy()
    back["ts_ms"][3] = back["ts_ms"][2]
    assert append_only(None, back, 0) is None
    with pytest.raises(UpstreamInvalid):
        merge(np.zeros(0, RECORD_DTYPE), back, 0)
    assert int(batch["ts_ms"][0]) // DAY_MS < last_day_ts // DAY_MS


@pytest.mark.parametrize("flags", [0, FLAG_PROVISIONAL, FLAG_LIVE, FLAG_LIVE | FLAG_PROVISIONAL])
def test_append_only_keeps_up_with_merge_on_flags(flags: int) -> None:
    """Whatever merge makes of new days (it drops FLAG_LIVE, keeps the rest), the fast path
    makes the same: final days (FLAG_DAY_END) and a live day's minutes alike."""
    batch = _versions(_bodies(6), 40)
    assert np.count_nonzero(batch["flags"] & FLAG_DAY_END) >= 4
    last_day = batch["ts_ms"] // DAY_MS == int(batch["ts_ms"][-1]) // DAY_MS
    batch["flags"][last_day] |= flags
    expected = merge(np.zeros(0, RECORD_DTYPE), batch, 40)[1]
    got = append_only(None, batch, 40)
    assert got is not None
    assert got.tobytes() == expected.tobytes()


def _records(n: int, seed: int) -> np.ndarray:
    r = np.zeros(n, RECORD_DTYPE)
    r["ts_ms"] = np.arange(n, dtype=np.int64) * 60_000 + seed
    r["close"] = np.random.default_rng(seed).random(n)
    return r


def test_append_parts_equals_append_of_concatenation(tmp_path: Path) -> None:
    meta = StoreMeta("EUR-USD", "BID", "1m")
    big = GROW_MIN_BYTES // RECORD_SIZE + 123  # crosses a growth of the file
    parts = [_records(5, 1), _records(0, 2), _records(big, 3), _records(700, 4)]
    a = Store.create(tmp_path / "a.bars", meta)
    b = Store.create(tmp_path / "b.bars", meta)
    a.append(np.concatenate(parts))
    b.append_parts(parts)
    assert a.length == b.length == sum(len(p) for p in parts)
    assert a.records.tobytes() == b.records.tobytes()
    # rewind and rewrite from an offset, with many small parts (more than one pwritev)
    small = [_records(3, 10 + i) for i in range(1200)]
    a.write(17, np.concatenate(small))
    b.write_parts(17, small)
    assert a.records.tobytes() == b.records.tobytes()
    a.close()
    b.close()


def test_decode_helper_equals_decode_candles() -> None:
    days = _bodies(20)
    bad_day, bad_body = days[3]
    broken = bad_body.replace(b'"shift":60000', b'"shift":60001')
    assert broken != bad_body
    items = [(d, False, 100 + i, body) for i, (d, body) in enumerate(days)]
    items[3] = (bad_day, False, 103, broken)
    helper = DecodeHelper()
    helper.start()
    try:
        wait_for(helper.ready, 10, what="the decode helper to start")
        assert helper.submit("EUR-USD", "BID", items)
        got = helper.result()
        assert got is not None and len(got) == len(items)
        for (d, live, offset, body), records in zip(items, got, strict=True):
            if offset == 103:
                assert records is None  # decoded again by the caller, which raises
                with pytest.raises(PayloadInvalid):
                    decode_candles(
                        body, symbol="EUR-USD", side="BID", day_ms=d, live=live, src_offset=offset
                    )
                continue
            expected = decode_candles(
                body, symbol="EUR-USD", side="BID", day_ms=d, live=live, src_offset=offset
            )
            assert records is not None
            assert records.tobytes() == expected.tobytes()
        # a second request reuses (and grows) the shared buffer
        assert helper.submit("EUR-USD", "BID", items[:2])
        again = helper.result()
        assert again is not None and again[1] is not None
        d, live, offset, body = items[1]
        expected = decode_candles(
            body, symbol="EUR-USD", side="BID", day_ms=d, live=live, src_offset=offset
        )
        assert again[1].tobytes() == expected.tobytes()
    finally:
        helper.close()


def test_transformer_release_inside_one_batch_keeps_the_held_days(tmp_path: Path) -> None:
    """[good, bad, held, good version of the bad day] in ONE batch: the held day is
    stored after the release (the records are in the batch; a resend would be a no-op)."""

    from barstream.services.transformer.service import Transformer
    from barstream.shared import protocol as p
    from barstream.shared.config import from_dict
    from barstream.shared.record import JOURNAL_DAY, JOURNAL_DTYPE, KIND_JOURNAL

    days = _bodies(3)
    bad = days[1][1].replace(b'"shift":60000', b'"shift":60001')
    entries = [days[0], (days[1][0], bad), days[2], days[1]]
    journal = np.zeros(len(entries), JOURNAL_DTYPE)
    journal["ts_ms"] = [d for d, _ in entries]
    journal["kind"] = JOURNAL_DAY
    bodies = [b for _, b in entries]
    cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / "data")}})
    service = Transformer(cfg, serve_metrics=False)
    try:
        batch = p.Batch(
            conn=1,
            stream="EUR-USD/BID/fetch",
            store_id="00",
            generation=0,
            start=0,
            count=len(entries),
            end=len(entries),
            kind=KIND_JOURNAL,
            attachments=len(entries),
        )
        service.apply(service.handle(batch, journal, bodies))
        got = service.stores.stores["EUR-USD/BID/days"].records
        expected = np.concatenate(
            [
                decode_candles(
                    body, symbol="EUR-USD", side="BID", day_ms=d, live=False, src_offset=i
                )
                for i, (d, body) in enumerate(entries)
                if i != 1
            ]
        )
        assert got.tobytes() == expected.tobytes()
        assert not service.held
    finally:
        service.stores.close()
        service.helper.close()
        service.ctx.destroy(linger=0)


def test_decode_helper_gone_means_decode_in_process() -> None:
    """A killed helper is noticed: work is refused (the transformer decodes itself)."""
    items = [(d, False, i, body) for i, (d, body) in enumerate(_bodies(2))]
    helper = DecodeHelper()
    helper.start()
    try:
        wait_for(helper.ready, 10, what="the decode helper to start")
        assert helper._proc is not None
        helper._proc.kill()
        helper._proc.wait()
        assert not helper.submit("EUR-USD", "BID", items)
    finally:
        helper.close()


def test_a_batch_of_bad_days_is_counted_each_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache full of bad days (here 40 in one batch, all rejected) is 40 counted errors and
    one ERROR line for the stream, not 40 lines: the log cannot be flooded through payloads."""
    import logging

    from barstream.services.transformer.service import Transformer
    from barstream.shared import protocol as p
    from barstream.shared.config import from_dict
    from barstream.shared.record import JOURNAL_DAY, JOURNAL_DTYPE, KIND_JOURNAL

    days = _bodies(40)
    entries = [(d, b.replace(b'"shift":60000', b'"shift":60001')) for d, b in days]
    journal = np.zeros(len(entries), JOURNAL_DTYPE)
    journal["ts_ms"] = [d for d, _ in entries]
    journal["kind"] = JOURNAL_DAY
    cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / "data")}})
    service = Transformer(cfg, serve_metrics=False)
    try:
        batch = p.Batch(
            conn=1, stream="EUR-USD/BID/fetch", store_id="00", generation=0, start=0,
            count=len(entries), end=len(entries), kind=KIND_JOURNAL, attachments=len(entries),
        )  # fmt: skip
        with caplog.at_level(logging.ERROR, logger=service.log.name):
            service.apply(service.handle(batch, journal, [b for _, b in entries]))
        lines = [r for r in caplog.records if "rejected journal record" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        assert "rejected journal record 0: EUR-USD/BID/" in lines[0].getMessage()
        assert service.payloads_bad == 40 and service.payload_log.events == 40
        assert "EUR-USD/BID/fetch" in service.held
    finally:
        service.stores.close()
        service.helper.close()
        service.ctx.destroy(linger=0)
