"""The missing history of a data directory (``barstream.missing``) from hand-made journals and
a transformer checkpoint, and the transformer moving past a held day the user skipped."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np

from barstream.fake.encoding import encode_candles
from barstream.fake.generators import RandomWalkGenerator
from barstream.missing import GAP, HELD, SKIPPED, count_bars, failing, journal_gaps, scan, summary
from barstream.services.downloader.raw_cache import RawCache, Skip
from barstream.services.downloader.source import body_digest, day_start_ms
from barstream.services.transformer.service import Transformer
from barstream.services.transformer.transform import decode_candles
from barstream.shared import protocol as p
from barstream.shared.config import from_dict
from barstream.shared.header import StoreMeta
from barstream.shared.record import (
    FLAG_SKIPPED,
    JOURNAL_DAY,
    JOURNAL_DTYPE,
    JOURNAL_GAP,
    KIND_JOURNAL,
)
from barstream.shared.storeset import StoreSet

START = dt.date(2024, 3, 4)  # a Monday


def body(day: dt.date) -> bytes:
    gen = RandomWalkGenerator(seed=3)
    return encode_candles(gen.day("EUR-USD", "BID", day), empty_timestamp_ms=day_start_ms(day))


def test_count_bars() -> None:
    good = body(START)
    assert count_bars(good) == len(
        decode_candles(
            good, symbol="EUR-USD", side="BID", day_ms=day_start_ms(START), live=False, src_offset=0
        )
    )
    assert count_bars(b'{"times":[]}') == 0
    assert count_bars(b"<html>") is None and count_bars(b'{"times":3}') is None


def test_scan_lists_held_gap_runs_and_skipped_days(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cache = RawCache(data / "raw", today=lambda: dt.date.max)
    days = [START + dt.timedelta(days=i) for i in range(8)]
    for d in days:
        cache.put("EUR-USD", "BID", d, body(d))
    skipped_body = body(days[1])
    cache.put_skip(
        Skip(
            symbol="EUR-USD",
            side="BID",
            day=days[1],
            digest=f"{body_digest(skipped_body):016x}",
            reason="bad upstream",
            skipped_ms=day_start_ms(dt.date(2026, 7, 1)) + 3_600_000,
            error="times[3]: step 0: times must strictly increase",
        )
    )
    # journal: d0 DAY, d1 DAY then skipped, d2 d3 gaps (HTTP 503), d4 not cached, d5..d7 DAY
    j = np.zeros(10, JOURNAL_DTYPE)
    order = [0, 1, 2, 3, 4, 5, 6, 7, 1]
    j["ts_ms"][:9] = [day_start_ms(days[i]) for i in order]
    j["kind"][:9] = (
        [JOURNAL_DAY, JOURNAL_DAY, JOURNAL_GAP, JOURNAL_GAP, JOURNAL_GAP]
        + [JOURNAL_DAY] * 3
        + [JOURNAL_GAP]
    )
    for i in (0, 1, 5, 6, 7):
        j["digest"][i] = body_digest(body(days[i]))
    j["http_status"][2:4] = 503
    j["attempts"][2:4] = 7
    j["digest"][8] = body_digest(skipped_body)
    j["flags"][8] = FLAG_SKIPPED
    j["fetched_ms"][8] = 5
    j = j[:9]
    dl = StoreSet.open(data / "downloader", "downloader")
    dl.ensure(StoreMeta("EUR-USD", "BID", "fetch", kind=KIND_JOURNAL)).append(j)
    dl.touch("EUR-USD/BID/fetch")
    dl.commit()
    dl.close()
    tr = StoreSet.open(data / "transformer", "transformer")
    tr.state["held"] = {
        "EUR-USD/BID/fetch": {
            "day_ms": day_start_ms(days[5]),
            "offset": 5,
            "error": "EUR-USD/BID/2024-03-09: highs[2]: high is below low",
            "field": "highs",
            "index": 2,
        }
    }
    tr.commit()
    tr.close()

    items = scan(data)
    assert [(m.kind, m.day, m.days) for m in items] == [
        (SKIPPED, days[1], 1),
        (GAP, days[2], 2),
        (GAP, days[4], 1),
        (HELD, days[5], 3),
    ]
    skipped, http, cached, held = items
    assert skipped.reason == "bad upstream" and skipped.bars == count_bars(skipped_body)
    assert skipped.message().startswith(
        "EUR-USD/BID 2024-03-05: gap skipped by the user on 2026-07-01 01:00 UTC (bad upstream)"
    )
    assert http.message() == (
        "EUR-USD/BID 2024-03-06 … 2024-03-07 (2 days): gap, no data: not fetched: 7 attempt(s), "
        "last HTTP 503"
    )
    assert "--start 2024-03-06 --end 2024-03-07" in http.todo("c.toml")
    assert "--day 2024-03-06 --end 2024-03-07" in http.todo("c.toml")
    assert "not in the raw cache" in cached.error
    assert held.message().startswith(
        "EUR-USD/BID 2024-03-09: held by a bad payload: field highs[2]: high is below low; "
        "nothing from this day on is stored (3 days, "
    )
    assert held.bars == sum(count_bars(body(d)) or 0 for d in days[5:])
    assert "--refetch --start 2024-03-09 --end 2024-03-09 --symbols EUR-USD --sides BID" in (
        held.todo()
    )
    assert failing(items, allow_skipped=True) == [http, cached, held]
    assert "3 gap day(s)" in summary(items) and "1 day(s) skipped" in summary(items)
    assert journal_gaps(data) == {"EUR-USD/BID/fetch": (4, 1)}


def test_the_transformer_moves_past_a_held_day_the_user_skipped(tmp_path: Path) -> None:
    """[good, bad, held, gap skipped for the bad day] in one batch: the held day is stored,
    nothing of the bad one, and the stream is no longer held."""
    days = [START + dt.timedelta(days=i) for i in range(3)]
    bodies = [body(d) for d in days]
    bodies[1] = bodies[1].replace(b'"shift":60000', b'"shift":60001')
    journal = np.zeros(4, JOURNAL_DTYPE)
    journal["ts_ms"] = [day_start_ms(d) for d in (*days, days[1])]
    journal["kind"] = [JOURNAL_DAY, JOURNAL_DAY, JOURNAL_DAY, JOURNAL_GAP]
    journal["flags"][3] = FLAG_SKIPPED

    def batch(start: int, n: int) -> p.Batch:
        return p.Batch(
            conn=1,
            stream="EUR-USD/BID/fetch",
            store_id="00",
            generation=0,
            start=start,
            count=n,
            end=start + n,
            kind=KIND_JOURNAL,
            attachments=n,
        )

    for run in ("held", "skipped"):
        cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / run)}})
        service = Transformer(cfg, serve_metrics=False)
        try:
            if run == "held":  # what the checkpoint keeps of a hold (rebuild/verify read it)
                service.apply(service.handle(batch(0, 3), journal[:3], bodies))
                hold = service.held["EUR-USD/BID/fetch"]
                assert (hold["offset"], hold["field"], hold["index"]) == (1, "shift", None)
                assert str(hold["error"]).startswith("EUR-USD/BID/2024-03-05: shift: ")
                assert "held until" not in str(hold["error"])  # the error, not its hint
                continue
            service.apply(service.handle(batch(0, 4), journal, [*bodies, b""]))
            got = service.stores.stores["EUR-USD/BID/days"].records
            expected = np.concatenate(
                [
                    decode_candles(
                        bodies[i],
                        symbol="EUR-USD",
                        side="BID",
                        day_ms=day_start_ms(days[i]),
                        live=False,
                        src_offset=i,
                    )
                    for i in (0, 2)
                ]
            )
            assert got.tobytes() == expected.tobytes()
            assert not service.held
        finally:
            service.stores.close()
            service.helper.close()
            service.ctx.destroy(linger=0)
