"""``barstream sql`` as a real process over a real gateway data dir: CSV (the export CSV's
time format), JSON Lines, Parquet and table output equal the store's records; errors exit
1 (a failed query: DuckDB's message and the query; a missing store: the file and what to
do) or 2 (a malformed bars() call, an unknown symbol or timeframe naming those that
exist, Parquet without --output)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.bar_stores import gateway_dir, minutes
from tests.support.ops import REPO, cli, pipeline_config, write_config


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    data_dir = tmp_path_factory.mktemp("data")
    return data_dir, gateway_dir(data_dir, minutes(seed=9, days=5))


def sql(data_dir: Path, query: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("sql", query, "--data-dir", str(data_dir), *args)


def iso(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_csv_to_stdout_equals_the_records(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    h1 = recs["1h"]
    done = sql(data_dir, "SELECT * FROM bars('EUR-USD', 'BID', '1h') ORDER BY time", "-f", "csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout)))
    assert rows[0] == [
        "time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "flags",
        "provisional",
        "ts_ms",
    ]
    assert len(rows) == len(h1) + 1
    assert [r[0] for r in rows[1:]] == [iso(t) for t in h1["ts_ms"].tolist()]
    for i, name in enumerate(("open", "high", "low", "close", "volume"), start=1):
        assert [float(r[i]) for r in rows[1:]] == h1[name].tolist(), name
    assert [r[7] for r in rows[1:]] == ["false"] * (len(h1) - 1) + ["true"]  # the open bar
    assert [int(r[8]) for r in rows[1:]] == h1["ts_ms"].tolist()


def test_csv_and_parquet_files(stores: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    data_dir, recs = stores
    m1 = recs["1m"]
    start, end = int(m1["ts_ms"][100]), int(m1["ts_ms"][1100])
    query = f"SELECT ts_ms, close, volume FROM bars('EUR-USD','BID','1m','{iso(start)}','{end}')"
    out = tmp_path / "out.parquet"
    done = sql(data_dir, query, "--format", "parquet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert f"sql: wrote 1000 rows to {out}" in done.stderr
    table = pq.read_table(out)
    assert table.column("ts_ms").to_pylist() == m1["ts_ms"][100:1100].tolist()
    assert table.column("close").to_pylist() == m1["close"][100:1100].tolist()
    out_csv = tmp_path / "out.csv"
    done = sql(data_dir, query, "-f", "csv", "-o", str(out_csv))
    assert done.returncode == 0, done.stderr
    lines = out_csv.read_text().splitlines()
    assert lines[0] == "ts_ms,close,volume" and len(lines) == 1001
    assert [int(x.split(",")[0]) for x in lines[1:]] == m1["ts_ms"][100:1100].tolist()


def test_json_lines_and_table(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    h1 = recs["1h"]
    done = sql(
        data_dir,
        "SELECT time, high, provisional FROM bars('EUR-USD','BID','1h') LIMIT 3",
        "-f",
        "json",
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows == [
        {"time": iso(int(t)), "high": float(h), "provisional": False}
        for t, h in zip(h1["ts_ms"][:3], h1["high"][:3], strict=True)
    ]
    done = sql(data_dir, "SELECT count(*) AS n FROM bars('EUR-USD','BID','1m')", "--max-rows", "5")
    assert done.returncode == 0, done.stderr
    cells = [line.strip("│ ") for line in done.stdout.splitlines()]
    assert done.stdout.startswith("┌") and cells[1:3] == ["n", "int64"]
    assert cells[4] == str(len(recs["1m"]))
    assert done.stdout.rstrip().endswith("1 rows")
    done = sql(data_dir, "SELECT ts_ms FROM bars('EUR-USD','BID','1h')", "--max-rows", "4")
    assert done.stdout.rstrip().endswith(f"{len(h1)} rows (4 shown; --max-rows N shows more)")


def test_query_from_stdin(stores: tuple[Path, dict[str, np.ndarray]]) -> None:
    data_dir, recs = stores
    done = subprocess.run(
        [sys.executable, "-m", "barstream", "sql", "-", "--data-dir", str(data_dir), "-f", "csv"],
        input="SELECT count(*) AS n FROM bars('EUR-USD', 'BID', '1h')",
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"n\n{len(recs['1h'])}\n"


def test_errors_and_exit_codes(stores: tuple[Path, dict[str, np.ndarray]], tmp_path: Path) -> None:
    data_dir, _ = stores
    done = sql(data_dir, "SELECT * FROM bars('EUR-USX', 'BID', '1h')")
    assert done.returncode == 2
    assert "symbol = 'EUR-USX'" in done.stderr and "['EUR-USD']" in done.stderr
    done = sql(data_dir, "SELECT * FROM bars('EUR-USD', 'BID', '4h')")
    assert done.returncode == 2 and "['1h', '1m']" in done.stderr
    done = sql(data_dir, "SELECT * FROM bars('EUR-USD', 'BID')")
    assert done.returncode == 2 and "takes 3 to 5 quoted strings" in done.stderr
    done = sql(data_dir, "SELECT * FROM bars('EUR-USD', 'BID', '1h')", "-f", "parquet")
    assert done.returncode == 2 and "--output FILE" in done.stderr
    query = "SELECT hgih FROM bars('EUR-USD', 'BID', '1h')"
    done = sql(data_dir, query)
    assert done.returncode == 1
    assert (
        'Referenced column "hgih" not found' in done.stderr and f"in query: {query}" in done.stderr
    )
    cfg = write_config(
        tmp_path / "c.toml", pipeline_config(tmp_path, tmp_path / "empty", fake_port=1)
    )
    done = cli("sql", "SELECT * FROM bars('EUR-USD','BID','1d')", "-c", str(cfg))
    assert done.returncode == 1
    assert str(tmp_path / "empty/gateway/EUR-USD/BID/1d.bars") in done.stderr
    assert "run it first" in done.stderr
    done = cli("sql", "SELECT * FROM bars('EUR-USD','BID','2h')", "-c", str(cfg))
    assert done.returncode == 2 and "['1m', '5m', '1h', '1d']" in done.stderr


def test_help_names_the_table_and_columns() -> None:
    done = cli("sql", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "bars('SYMBOL', 'SIDE', 'TIMEFRAME'[, 'START'[, 'END']])" in text
    assert "time (timestamp UTC, bar open), open, high, low, close, volume, flags" in text
