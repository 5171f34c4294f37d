"""barstream.frames and barstream.sql over real committed stores: DuckDB aggregates equal
numpy, a 1h resample in SQL equals barstream's own 1h store, Polars and pandas equal the
records, time ranges equal slices, uncommitted records stay invisible, a scan meeting a
writer's rewrite takes it in (past what it handed out) or says so (below), bars() calls
are rewritten only where they are table calls, and errors name what exists."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest

from barstream import frames, sql
from barstream.shared.errors import (
    ConfigError,
    QueryError,
    StoreMissing,
    StoreRewritten,
    UnknownStore,
)
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.storeset import StoreSet
from barstream.store_scan import CommittedScan
from tests.support.bar_stores import gateway_dir, minutes, write_stores
from tests.support.ops import pipeline_config, write_config

KEY_1M = "EUR-USD/BID/1m"
SMALL = 997  # batch rows: many batches, and batch ends that fall anywhere


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, gateway_dir(data_dir, minutes(seed=7, days=30))


def query(data_dir: Path, text: str, batch_rows: int = SMALL) -> list[tuple[object, ...]]:
    result = sql.run(text, data_dir=data_dir, batch_rows=batch_rows)
    assert result is not None
    rows: list[tuple[object, ...]] = list(zip(*result.read_all().to_pydict().values(), strict=True))
    return rows


def test_duckdb_aggregates_equal_numpy(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    m1 = recs["1m"]
    ((n, lo, hi, vol, closes, first, last, prov),) = query(
        data_dir,
        "SELECT count(*), min(low), max(high), sum(volume), sum(close), min(ts_ms), "
        "max(ts_ms), count(*) FILTER (WHERE provisional) FROM bars('EUR-USD', 'BID', '1m')",
    )
    assert n == len(m1) > 20 * SMALL
    assert (lo, hi) == (m1["low"].min(), m1["high"].max())
    assert (vol, closes) == (m1["volume"].sum(), m1["close"].sum())  # integers: exact
    assert (first, last) == (m1["ts_ms"][0], m1["ts_ms"][-1])
    assert prov == 1 == int((m1["flags"] & FLAG_PROVISIONAL != 0).sum())


def test_sql_resample_equals_barstreams_1h(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    rows = query(
        data_dir,
        """SELECT ts_ms // 3600000 * 3600000 AS hour, first(open ORDER BY ts_ms),
                  max(high), min(low), last(close ORDER BY ts_ms), sum(volume), count(*)
           FROM bars('EUR-USD', 'BID', '1m') GROUP BY hour ORDER BY hour""",
    )
    h1 = recs["1h"]
    fields = ("ts_ms", "open", "high", "low", "close", "volume", "src_count")
    assert rows == list(zip(*(h1[f].tolist() for f in fields), strict=True))
    # The same with DuckDB's own time functions on the timestamp column (session zone UTC).
    rows2 = query(
        data_dir,
        "SELECT time_bucket(INTERVAL 1 HOUR, time) AS h, max(high) FROM "
        "bars('EUR-USD','BID','1m') GROUP BY h ORDER BY h",
    )
    assert [int(h.timestamp() * 1000) for h, _ in rows2] == h1["ts_ms"].tolist()  # type: ignore[attr-defined]
    assert [x for _, x in rows2] == h1["high"].tolist()


def test_same_bars_twice_in_one_query(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    ((n, same),) = query(
        data_dir,
        "SELECT count(*), count(*) FILTER (WHERE a.close = b.close) FROM "
        "bars('EUR-USD','BID','1m') a JOIN bars('EUR-USD','BID','1m') b USING (ts_ms)",
    )
    assert n == same == len(recs["1m"])
    ((m, h),) = query(
        data_dir,
        "SELECT (SELECT count(*) FROM bars('EUR-USD','BID','1m')), "
        "(SELECT count(*) FROM bars('EUR-USD','BID','1h'))",
    )
    assert (m, h) == (len(recs["1m"]), len(recs["1h"]))


def columns_equal(frame: pd.DataFrame | pl.DataFrame, records: np.ndarray) -> None:
    for f in ("ts_ms", "open", "high", "low", "close", "volume", "flags"):
        assert np.array_equal(np.asarray(frame[f]), records[f]), f
    prov = (records["flags"] & FLAG_PROVISIONAL) != 0
    assert np.array_equal(np.asarray(frame["provisional"]), prov)


def test_polars_and_pandas_equal_the_records(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    m1 = recs["1m"]
    lf = frames.scan("EUR-USD", "BID", "1m", data_dir=data_dir, batch_rows=SMALL)
    assert isinstance(lf, pl.LazyFrame)
    df = lf.collect()
    assert list(df.columns) == list(frames.COLUMNS)
    assert df.schema["time"] == pl.Datetime("ms", "UTC")
    columns_equal(df, m1)
    assert (df["time"].dt.epoch("ms") == df["ts_ms"]).all()
    # Projection, predicate and limit pushed into the read.
    part = lf.filter(pl.col("volume") > 500).select("ts_ms", "close").head(777).collect()
    want = m1[m1["volume"] > 500][:777]
    assert part.columns == ["ts_ms", "close"]
    assert part["ts_ms"].to_list() == want["ts_ms"].tolist()
    assert part["close"].to_list() == want["close"].tolist()
    pdf = frames.read_pandas("EUR-USD", "BID", "1m", data_dir=data_dir, batch_rows=SMALL)
    columns_equal(pdf, m1)
    assert str(pdf["time"].dtype) == "datetime64[ms, UTC]"
    assert (pdf["time"].astype("int64") == pdf["ts_ms"]).all()


def test_range_equals_slice(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    m1 = recs["1m"]
    ts = m1["ts_ms"]
    lo_ms, hi_ms = int(ts[5000]), int(ts[9000])  # exact record times: start in, end out
    want = m1[5000:9000]
    table = frames.read_arrow(
        "EUR-USD", "BID", "1m", data_dir=data_dir, start=lo_ms, end=hi_ms, batch_rows=SMALL
    )
    assert table.column("ts_ms").to_pylist() == want["ts_ms"].tolist()
    got = frames.read_pandas(
        "EUR-USD", "BID", "1m", data_dir=data_dir, start=lo_ms + 1, end=hi_ms + 1
    )
    assert got["ts_ms"].tolist() == m1["ts_ms"][5001:9001].tolist()
    iso = pd.Timestamp(lo_ms, unit="ms", tz="UTC").isoformat()
    rows = query(data_dir, f"SELECT ts_ms FROM bars('EUR-USD','BID','1m','{iso}','{hi_ms}')")
    assert [r[0] for r in rows] == want["ts_ms"].tolist()
    # A range before or after the records is empty, not an error.
    assert frames.read_arrow("EUR-USD", "BID", "1m", data_dir=data_dir, end=0).num_rows == 0
    after = int(ts[-1]) + 60_000
    assert frames.read_arrow("EUR-USD", "BID", "1m", data_dir=data_dir, start=after).num_rows == 0


def test_arrow_reader_batches_are_bounded(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    reader = frames.arrow_reader("EUR-USD", "BID", "1m", data_dir=data_dir, batch_rows=SMALL)
    sizes = [b.num_rows for b in reader]
    assert max(sizes) == SMALL and sum(sizes) == len(recs["1m"])


def test_uncommitted_records_are_not_visible(tmp_path: Path) -> None:
    m1 = minutes(seed=3, days=10)
    committed, rest = m1[:3000], m1[3000:]
    write_stores(tmp_path, {KEY_1M: committed})
    ss = StoreSet.open(tmp_path / "gateway", "gateway")
    store = ss.get(KEY_1M)
    assert store is not None
    store.append(rest)  # written to the file, not committed
    ss.touch(KEY_1M)

    def count() -> int:
        return len(frames.read_arrow("EUR-USD", "BID", "1m", data_dir=tmp_path))

    assert count() == 3000
    ((n,),) = query(tmp_path, "SELECT count(*) FROM bars('EUR-USD','BID','1m')")
    assert n == 3000
    ss.commit()
    assert count() == len(m1)
    store.truncate(1000)  # a rewrite of committed records begins: readers see [0, 1000)
    assert count() == 1000
    ss.close()  # never committed: the next open restores the committed records


def test_scan_takes_in_a_rewrite_past_what_it_handed_out(tmp_path: Path) -> None:
    m1 = minutes(seed=4, days=10)
    write_stores(tmp_path, {KEY_1M: m1})
    path = tmp_path / "gateway/EUR-USD/BID/1m.bars"
    ss = StoreSet.open(tmp_path / "gateway", "gateway")
    store = ss.get(KEY_1M)
    assert store is not None
    batches = iter(CommittedScan(path, batch_rows=1000))
    got = [next(batches)["ts_ms"]]
    new_tail = m1[-500:].copy()
    new_tail["close"] += 1  # a revision of the last 500 records, and 10 more records
    more = m1[-10:].copy()
    more["ts_ms"] = m1["ts_ms"][-1] + 60_000 * np.arange(1, 11)
    store.replace_from(len(m1) - 500, np.concatenate([new_tail, more]))
    ss.touch(KEY_1M)
    ss.commit()
    closes: list[np.ndarray] = []
    for b in batches:
        got.append(b["ts_ms"])
        closes.append(b["close"])
    now = store.records
    assert np.array_equal(np.concatenate(got), now["ts_ms"])
    assert np.array_equal(np.concatenate(closes), now["close"][1000:])
    ss.close()


def test_scan_refuses_a_rewrite_below_what_it_handed_out(tmp_path: Path) -> None:
    m1 = minutes(seed=5, days=10)
    write_stores(tmp_path, {KEY_1M: m1})
    path = tmp_path / "gateway/EUR-USD/BID/1m.bars"
    ss = StoreSet.open(tmp_path / "gateway", "gateway")
    store = ss.get(KEY_1M)
    assert store is not None
    batches = iter(CommittedScan(path, batch_rows=1000))
    next(batches), next(batches)
    revised = m1[1500:].copy()
    revised["high"] += 1
    store.replace_from(1500, revised)  # below the 2000 records handed out
    ss.touch(KEY_1M)
    ss.commit()
    with pytest.raises(StoreRewritten) as err:
        list(batches)
    assert err.value.offset == 1500 and str(path) in str(err.value)
    ss.close()


def test_scan_waits_for_a_rewrite_in_progress(tmp_path: Path) -> None:
    """A rewrite begun (seq odd) past the scan's position: the scan waits for the commit
    and reads the new records."""
    m1 = minutes(seed=6, days=10)
    write_stores(tmp_path, {KEY_1M: m1})
    path = tmp_path / "gateway/EUR-USD/BID/1m.bars"
    ss = StoreSet.open(tmp_path / "gateway", "gateway")
    store = ss.get(KEY_1M)
    assert store is not None
    batches = iter(CommittedScan(path, batch_rows=1000))
    first = next(batches)["ts_ms"]
    store.truncate(len(m1) - 3)
    tail = m1[-3:].copy()
    tail["volume"] = 12345

    def commit_later() -> None:
        time.sleep(0.2)
        store.append(tail)
        ss.touch(KEY_1M)
        ss.commit()

    t = threading.Thread(target=commit_later)
    t.start()
    rest = list(batches)
    t.join(timeout=10)
    assert np.array_equal(np.concatenate([first, *(b["ts_ms"] for b in rest)]), m1["ts_ms"])
    assert rest[-1]["volume"][-3:].tolist() == [12345] * 3
    ss.close()


def test_bars_rewrite_only_table_calls() -> None:
    text, calls = sql.rewrite(
        "SELECT 'bars(1,2,3)' AS s, \"bars\" FROM bars( 'EUR-USD' ,'BID', '1h') x "
        "-- bars('a','b','c')\n JOIN BARS('EUR-USD','BID','1h', '2026-01-01') y ON x.bars(1) "
        "/* bars('p','q','r') */ UNION SELECT * FROM bars('X''Y','ASK','1d')"
    )
    assert calls == [
        sql.BarsCall("EUR-USD", "BID", "1h"),
        sql.BarsCall("EUR-USD", "BID", "1h", "2026-01-01"),
        sql.BarsCall("X'Y", "ASK", "1d"),
    ]
    assert "'bars(1,2,3)'" in text and "-- bars('a','b','c')" in text and "x.bars(1)" in text
    assert "/* bars('p','q','r') */" in text
    assert text.count('"bars(') == 3


@pytest.mark.parametrize(
    "bad", ["bars('EUR-USD','BID')", "bars('a','b','c','d','e','f')", "bars(EUR, 'BID', '1h')"]
)
def test_malformed_bars_call_is_a_usage_error(bad: str) -> None:
    with pytest.raises(ConfigError) as err:  # exit 2
        sql.rewrite(f"SELECT * FROM {bad}")
    assert "takes 3 to 5 quoted strings" in str(err.value)


def test_errors_name_what_exists(
    tmp_path: Path, stores: tuple[Path, dict[str, np.ndarray]]
) -> None:
    data_dir, _ = stores
    with pytest.raises(UnknownStore) as err:
        frames.scan("EUR-USX", "BID", "1m", data_dir=data_dir)
    assert "EUR-USX" in str(err.value) and "['EUR-USD']" in str(err.value)
    with pytest.raises(UnknownStore, match=r"\['1h', '1m'\]"):
        frames.arrow_reader("EUR-USD", "BID", "4h", data_dir=data_dir)
    with pytest.raises(UnknownStore, match="gateway"):
        frames.arrow_reader("EUR-USD", "BID", "1m", data_dir=data_dir, store="downloader")
    # With a configuration: its names are what exists; a listed store without a file is
    # missing, naming the file and what to do.
    cfg = write_config(tmp_path / "c.toml", pipeline_config(tmp_path, tmp_path / "d", fake_port=1))
    with pytest.raises(UnknownStore, match=r"'7m'.*\['1m', '5m', '1h', '1d'\]"):
        frames.arrow_reader("EUR-USD", "BID", "7m", config=cfg)
    with pytest.raises(StoreMissing) as missing:
        frames.arrow_reader("EUR-USD", "BID", "5m", config=cfg)
    assert str(tmp_path / "d/gateway/EUR-USD/BID/5m.bars") in str(missing.value)
    assert "run it first" in str(missing.value)
    with pytest.raises(QueryError) as bad:
        query(data_dir, "SELECT nope FROM bars('EUR-USD','BID','1m')")
    assert '"nope"' in str(bad.value) and "in query: SELECT nope FROM bars(" in str(bad.value)


def test_empty_store_reads_as_no_rows(tmp_path: Path) -> None:
    write_stores(tmp_path, {KEY_1M: np.zeros(0, RECORD_DTYPE)})
    assert frames.scan("EUR-USD", "BID", "1m", data_dir=tmp_path).collect().height == 0
    assert query(tmp_path, "SELECT count(*) FROM bars('EUR-USD','BID','1m')") == [(0,)]


def test_a_duckdb_connection_can_take_a_source_directly(
    stores: tuple[Path, dict[str, np.ndarray]],
) -> None:
    data_dir, recs = stores
    con = duckdb.connect()
    con.register("m1", frames.bars("EUR-USD", "BID", "1m", data_dir=data_dir))
    assert con.sql("SELECT count(*) FROM m1").fetchall() == [(len(recs["1m"]),)]
    assert con.sql("SELECT count(*) FROM m1").fetchall() == [(len(recs["1m"]),)]  # again
