"""No copy of the store: a DuckDB aggregate and a Polars LazyFrame aggregate over a store of
4 M records (256 MB) raise the peak resident size (VmHWM, file-mapped pages included) of a
fresh process by far less than the store — and a full read into one Arrow table, which
does copy it, shows that the meter sees a copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE
from tests.support.bar_stores import START_MS, write_stores
from tests.support.ops import REPO

N = 4_000_000

PROBE = r"""
import json, sys
import polars as pl
from barstream import frames, sql

def hwm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

data_dir = sys.argv[1]
AGG = "SELECT count(*), sum(volume), max(high), min(low) FROM bars('EUR-USD','BID','1m')"
def duck(q):
    return sql.run(q, data_dir=data_dir).read_all().to_pylist()
def lazy():
    return frames.scan("EUR-USD", "BID", "1m", data_dir=data_dir)
# Warm up: load DuckDB, Polars and pandas (DuckDB imports it), allocate the first batches.
duck(AGG.replace("FROM bars('EUR-USD','BID','1m')", "FROM bars('EUR-USD','BID','1m', '0', '%d')" % int(sys.argv[2])))
lazy().head(200000).select(pl.col("close").sum()).collect()
out = {"base": hwm_bytes()}
out["duckdb"] = duck(AGG)[0]
out["after_duckdb"] = hwm_bytes()
agg = lazy().select(pl.len(), pl.col("volume").sum(), pl.col("high").max()).collect()
out["polars"] = agg.row(0)
out["after_polars"] = hwm_bytes()
table = frames.read_arrow("EUR-USD", "BID", "1m", data_dir=data_dir)
out["copied_rows"] = table.num_rows
out["after_copy"] = hwm_bytes()
print(json.dumps(out))
"""


def test_query_memory_stays_far_below_the_store_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    m1 = np.zeros(N, RECORD_DTYPE)
    m1["ts_ms"] = START_MS + np.arange(N, dtype=np.int64) * 60_000
    price = 100_000 + np.cumsum(rng.integers(-3, 4, N))
    m1["open"] = price
    m1["close"] = price + rng.integers(-2, 3, N)
    m1["high"] = np.maximum(m1["open"], m1["close"]) + 1
    m1["low"] = np.minimum(m1["open"], m1["close"]) - 1
    m1["volume"] = rng.integers(0, 100, N)
    write_stores(tmp_path, {"EUR-USD/BID/1m": m1})
    del price
    store_bytes = N * RECORD_SIZE
    warm_end_ms = int(m1["ts_ms"][300_000])
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), str(warm_end_ms)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["duckdb"] == {
        "count_star()": N,
        "sum(volume)": float(m1["volume"].sum()),
        "max(high)": float(m1["high"].max()),
        "min(low)": float(m1["low"].min()),
    }
    assert list(out["polars"]) == [N, float(m1["volume"].sum()), float(m1["high"].max())]
    duck_growth = out["after_duckdb"] - out["base"]
    polars_growth = out["after_polars"] - out["base"]  # the peak of both, over the base
    copy_growth = out["after_copy"] - out["after_polars"]
    report = (
        f"store {store_bytes / 2**20:.0f} MiB; peak RSS growth: DuckDB {duck_growth / 2**20:.1f} "
        f"MiB, Polars {polars_growth / 2**20:.1f} MiB, full copy {copy_growth / 2**20:.1f} MiB"
    )
    print(report)
    assert duck_growth < 0.25 * store_bytes, report
    assert polars_growth < 0.25 * store_bytes, report
    # The meter sees a real copy: the whole selection in one table is ~ 57/64 of the store.
    assert out["copied_rows"] == N
    assert copy_growth > 0.5 * store_bytes, report
