"""The stage contract: a handler returns ``[Change(key, from X, records)]`` and
``Service.apply`` alone writes, counts rewinds and records, marks stores and commits; an
upstream batch a stage cannot take is a counted rejection, never a crash or a stray file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from barstream.services.aggregator.service import Aggregator
from barstream.services.resampler.service import Resampler
from barstream.shared import protocol as p
from barstream.shared.config import from_dict
from barstream.shared.header import StoreMeta
from barstream.shared.record import KIND_BARS, RECORD_DTYPE
from barstream.shared.service import Change, Service
from barstream.shared.timeframe import MINUTE_MS

T0 = 1_700_000_040_000 // 60_000 * 60_000


def bars(n: int, start: int = 0) -> np.ndarray:
    r = np.zeros(n, RECORD_DTYPE)
    r["ts_ms"] = T0 + (np.arange(n) + start) * MINUTE_MS
    r["open"] = r["high"] = r["low"] = r["close"] = 1.0 + (np.arange(n) + start) / 1000
    r["src_offset"] = np.arange(n) + start
    r["src_count"] = 1
    return r


def batch(stream: str, start: int, count: int) -> p.Batch:
    return p.Batch(
        conn=1,
        stream=stream,
        store_id="00",
        generation=0,
        start=start,
        count=count,
        end=start + count,
        kind=KIND_BARS,
        attachments=0,
    )


def value(service: Service, name: str, **labels: str) -> float:
    got = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


@pytest.fixture
def aggregator(tmp_path: Path):
    cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / "data"), "commit_interval_s": 60}})
    service = Aggregator(cfg, serve_metrics=False)
    yield service
    service.stores.close()
    service.ctx.destroy(linger=0)


def test_apply_appends_rewrites_and_counts(aggregator: Aggregator) -> None:
    s = aggregator
    key = s.stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).meta.key
    labels = {"symbol": "EUR-USD", "side": "BID", "timeframe": "1m"}
    s.apply([Change(key, 0, (bars(5),))])
    store = s.stores.stores[key]
    assert store.length == 5
    assert value(s, "barstream_records_written_total") == 5
    s.commit()
    # A diff change that repeats what the store reads changes nothing, counts nothing.
    s.apply([Change(key, 2, (bars(3, 2),), diff=True)])
    assert store.length == 5 and not s.stores.pending()
    assert value(s, "barstream_rewinds_total", **labels) == 0
    # From 3 on the store now reads one different record: a rewind of committed history,
    # rewritten only from the first record that differs.
    new = bars(2, 3)[:1].copy()
    new["close"] = 9.0
    s.apply([Change(key, 3, (bars(0), new), diff=True)])
    assert store.length == 4
    assert float(store.records["close"][3]) == 9.0
    assert value(s, "barstream_rewinds_total", **labels) == 1
    assert value(s, "barstream_records_written_total") == 6
    assert s.stores.pending()
    # Parts are written as their concatenation, without a diff.
    s.apply([Change(key, 4, (bars(1, 4), bars(2, 5)))])
    assert store.length == 7
    assert store.records.tobytes()[4 * 64 :] == np.concatenate([bars(1, 4), bars(2, 5)]).tobytes()


@pytest.mark.parametrize(
    "stream", ["nodelimiter", "../../1m", "EUR-USD/BID", "EUR-USD/BID/5m", "a//b"]
)
def test_aggregator_rejects_foreign_streams(aggregator: Aggregator, stream: str) -> None:
    root = Path(aggregator.config.data_dir("aggregator"))
    before = sorted(root.parent.rglob("*"))
    assert aggregator.handle(batch(stream, 0, 3), bars(3), []) == ()
    assert value(aggregator, "barstream_errors_total", kind="upstream_invalid") == 1
    assert sorted(root.parent.rglob("*")) == before  # no store made, inside or outside


def test_aggregator_drops_an_invalid_day_version(aggregator: Aggregator) -> None:
    s = aggregator
    day = bars(3)
    day["src_offset"] = 0  # one day version of three minutes
    s.apply(s.handle(batch("EUR-USD/BID/days", 0, 3), day, []))
    bad = bars(3)
    bad["src_offset"] = 3  # one day version …
    bad["ts_ms"][2] = bad["ts_ms"][1]  # … whose times go backwards: merge refuses it
    assert s.handle(batch("EUR-USD/BID/days", 3, 3), bad, []) == ()
    assert value(s, "barstream_errors_total", kind="upstream_invalid") == 1
    assert s.stores.stores["EUR-USD/BID/1m"].length == 3


def test_resampler_rejects_foreign_streams(tmp_path: Path) -> None:
    cfg = from_dict({"pipeline": {"data_dir": str(tmp_path / "data")}})
    service = Resampler(cfg, serve_metrics=False)
    try:
        for stream in ("x", "../../1m", "EUR-USD/BID/days"):
            assert service.handle(batch(stream, 0, 2), bars(2), []) == ()
        assert value(service, "barstream_errors_total", kind="upstream_invalid") == 3
        assert not list(tmp_path.rglob("*.bars"))
    finally:
        service.stores.close()
        service.ctx.destroy(linger=0)
