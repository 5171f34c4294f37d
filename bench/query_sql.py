"""SQL and DataFrames over a store, read in place (``barstream sql``, ``barstream.frames``).

A committed gateway 1m store of 20 years of weekday minutes (7.49 M records, 457 MiB) in
the repo's ``var/``; then, in this process:

- DuckDB aggregate ``count, min(low), max(high), sum(volume), arg_min(open, ts_ms),
  arg_max(close, ts_ms)`` (first open, last close) over every record (``sql.run``, the
  whole command path but the process start): the first query of the process (DuckDB
  imports pandas then, ~0.5 s, once) and the median of 5 after it — target ≤ 0.3 s;
- DuckDB 1h resample in SQL (first open, max high, min low, last close, sum volume grouped
  by hour; 125 k bars), median of 3 (``first(x ORDER BY ts_ms)`` is ~1.5x slower than
  ``arg_min(x, ts_ms)``, same result);
- Polars: the same aggregate on ``frames.scan(...)`` (a LazyFrame), median of 3;
- peak resident growth (VmHWM, mapped file pages included) over the warm queries: reset
  through ``/proc/self/clear_refs`` once the store is written and DuckDB and Polars are
  loaded (their code and first allocations are no part of a query's memory).

    python -m bench.query_sql
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from barstream.shared.header import StoreMeta
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE
from barstream.shared.storeset import StoreSet

REPO = Path(__file__).resolve().parent.parent
YEARS = 20
AGG = (
    "SELECT count(*), min(low), max(high), sum(volume), arg_min(open, ts_ms), "
    "arg_max(close, ts_ms) FROM bars('EUR-USD', 'BID', '1m')"
)
RESAMPLE = """SELECT ts_ms // 3600000 AS hour, arg_min(open, ts_ms), max(high), min(low),
    arg_max(close, ts_ms), sum(volume) FROM bars('EUR-USD', 'BID', '1m') GROUP BY hour"""


def weekday_minutes(years: int) -> np.ndarray:
    """1m records of every weekday minute of ``years`` years from 2006-01-02 (a Monday)."""
    start = 1_136_160_000_000  # 2006-01-02T00:00Z
    ts = start + np.arange(years * 52 * 7 * 1440, dtype=np.int64) * 60_000
    ts = ts[((ts - start) // 86_400_000) % 7 < 5]
    rng = np.random.default_rng(1)
    n = len(ts)
    r = np.zeros(n, RECORD_DTYPE)
    r["ts_ms"] = ts
    price = 110_000 + np.cumsum(rng.integers(-3, 4, n))
    r["open"] = price * 1e-5
    r["close"] = (price + rng.integers(-2, 3, n)) * 1e-5
    r["high"] = np.maximum(r["open"], r["close"]) + 1e-5
    r["low"] = np.minimum(r["open"], r["close"]) - 1e-5
    r["volume"] = rng.integers(1, 500, n)
    r["src_count"] = 1
    return r


def write_gateway_store(data_dir: Path, records: np.ndarray) -> None:
    """Commit ``records`` as the gateway's EUR-USD/BID/1m store under ``data_dir``."""
    stores = StoreSet.open(data_dir / "gateway", "gateway")
    stores.ensure(StoreMeta("EUR-USD", "BID", "1m")).append(records)
    stores.touch("EUR-USD/BID/1m")
    stores.commit()
    stores.close()


def reset_hwm() -> None:
    """Start VmHWM over from the current RSS (Linux: ``5`` into clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def run() -> list[tuple[str, float, str]]:
    import polars as pl

    from barstream import frames, sql

    records = weekday_minutes(YEARS)
    n = len(records)
    (REPO / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "var", prefix="bs-bench-sql-") as d:
        data_dir = Path(d)
        write_gateway_store(data_dir, records)
        want = (n, records["low"].min(), records["high"].max(), records["volume"].sum())
        first_open, last_close = records["open"][0], records["close"][-1]
        del records

        def aggregate() -> None:
            result = sql.run(AGG, data_dir=data_dir)
            assert result is not None
            row = result.read_all().to_pylist()[0]
            got = tuple(row.values())
            assert got == (*want, first_open, last_close), (got, want)

        def resample() -> None:
            result = sql.run(RESAMPLE, data_dir=data_dir)
            assert result is not None
            assert result.read_all().num_rows == n // 60

        def polars() -> None:
            lf = frames.scan("EUR-USD", "BID", "1m", data_dir=data_dir)
            got = lf.select(
                pl.len(), pl.col("low").min(), pl.col("high").max(), pl.col("volume").sum()
            ).collect()
            assert got.row(0) == want

        first = timed(aggregate, 1)[0]
        frames.scan("EUR-USD", "BID", "1m", data_dir=data_dir).head(1000).collect()
        reset_hwm()  # engines loaded: from here on, what the queries themselves hold
        base = hwm_bytes()
        warm = statistics.median(timed(aggregate, 5))
        hourly = statistics.median(timed(resample, 3))
        lazy = statistics.median(timed(polars, 3))
        growth = hwm_bytes() - base
    label = f"{n / 1e6:.2f} M 1m records ({YEARS} years)"
    return [
        (f"sql: DuckDB aggregate over {label}, warm median (target <= 0.3 s)", warm, "s"),
        (f"sql: DuckDB aggregate over {label}, first query of the process", first, "s"),
        (f"sql: DuckDB 1h resample in SQL over {label}", hourly, "s"),
        (f"frames: Polars LazyFrame aggregate over {label}", lazy, "s"),
        (
            f"sql+frames: peak RSS growth over the warm queries (store {n * RECORD_SIZE / 2**20:.0f} MiB)",
            growth / 2**20,
            "MiB",
        ),
    ]


if __name__ == "__main__":
    from bench import print_table

    print_table(run())
