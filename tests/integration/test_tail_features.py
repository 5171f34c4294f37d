"""``barstream tail … --features SET`` and ``barstream history … --features SET``: bars with
their feature outputs on the command line, as real processes against a gateway serving a
drain-run pipeline's feature stores; every printed value equals the client's
``history(..., features=...)``."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.pipeline import REPO, core_features, pipeline
from tests.support.wait import wait_for


def barstream(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "barstream", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def tail_lines(args: list[str], n: int, timeout_s: float = 60) -> tuple[list[str], int, str]:
    """Run ``barstream tail``, read ``n`` lines, press ^C: (lines, exit code, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "barstream", "tail", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = []
        for line in proc.stdout:  # tail flushes each item: the history item comes at once
            lines.append(line.rstrip("\n"))
            if len(lines) == n:
                break
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=timeout_s)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return lines, code, err


def fields(line: str) -> dict[str, str]:
    return dict(w.split("=", 1) for w in line.split() if "=" in w)


@pytest.mark.timeout(300)
def test_tail_and_history_with_features(tmp_path: Path, ipc_dir: Path) -> None:
    from barstream.client import GatewayClient
    from barstream.export import num

    pub, req = f"ipc://{ipc_dir}/gw-pub", f"ipc://{ipc_dir}/gw-req"
    ends = ["--publish", pub, "--requests", req, "--timeout", "10"]
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID"],
        start_date=dt.date(2026, 1, 5),
        end_date=dt.date(2026, 1, 6),
        timeframes=["5m", "1h"],
        features=core_features(),
    ) as p:
        p.write_config()
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        p.drain_all()
        p.start("gateway")
        with GatewayClient(pub, req, timeout_s=2) as gw:
            wait_for(
                lambda: len(gw.history("EUR-USD", "1m", last=3, features="core")) == 3,
                30,
                what="the gateway to answer",
                ignore=(TimeoutError,),
            )
            want = gw.history("EUR-USD", "1m", last=3, features="core")
            h1 = gw.history("EUR-USD", "1h", features="core")
        outputs = list((want.dtype.names or ())[7:])
        assert len(want) == 3 and "rsi_14.value" in outputs

        # tail --features: the last 3 bars, each with every output of the set, as name=value.
        lines, code, err = tail_lines(["EUR-USD", "1m", "--features", "core", "-n", "3", *ends], 3)
        assert code == 130, err
        assert "following gateway" in err and "Traceback" not in err, err
        for line, row in zip(lines, want, strict=True):
            got = fields(line)
            when = dt.datetime.fromtimestamp(int(row["ts_ms"]) / 1000, dt.UTC)
            assert f"{when:%Y-%m-%d %H:%M}" in line, line
            assert got["c"] == f"{float(row['close']):.5f}", line
            assert list(got)[5:] == outputs, line  # o h l c v, then the set's outputs in order
            for c in outputs:
                assert got[c] == f"{float(row[c]):.6g}", (c, line)

        # --columns picks outputs; an unknown one is a usage error naming what the set has.
        cols = ["EUR-USD", "1m", "--features", "core", "-n", "3", "--columns"]
        lines, code, _ = tail_lines([*cols, "rsi_14.value,sma_20", *ends], 3)
        assert code == 130
        assert [list(fields(x))[5:] for x in lines] == [["rsi_14.value", "sma_20"]] * 3
        assert [fields(x)["sma_20"] for x in lines] == [f"{v:.6g}" for v in want["sma_20"]]
        done = barstream("tail", *cols, "nope", *ends)
        assert done.returncode == 2 and "no output nope" in done.stderr, done.stderr
        # A set the gateway does not serve: exit 1, the reason said.
        done = barstream("tail", "EUR-USD", "1m", "--features", "nosuch", *ends)
        assert done.returncode == 1, done
        assert "serves no feature topic 'EUR-USD/BID/1m.nosuch'" in done.stderr, done.stderr
        done = barstream("tail", "EUR-USD", "1m", "--columns", "sma_20", *ends)
        assert done.returncode == 2 and "--columns needs --features" in done.stderr

        # history --features: the CSV goes on with the outputs' columns, values round-trip.
        done = barstream("history", "EUR-USD", "1h", "--features", "core", *ends)
        assert done.returncode == 0, done.stderr
        rows = done.stdout.splitlines()
        header = rows[0].split(",")
        assert header[:7] == ["time", "open", "high", "low", "close", "volume", "provisional"]
        assert header[7:] == outputs
        assert len(rows) == len(h1) + 1 > 40
        for c in ("sma_20", "rsi_14.value", "macd_12_26_9.hist"):
            col = [r.split(",")[header.index(c)] for r in rows[1:]]
            assert col == [num(v) for v in h1[c]], c
            back = np.array(col, dtype=np.float64)
            np.testing.assert_array_equal(back, h1[c])  # nan while warming up, then exact
        assert rows[1].split(",")[header.index("sma_20")] == "nan"
        done = barstream(
            "history", "EUR-USD", "1h", "--features", "core", "--columns", "sma_20", *ends
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0].endswith(",provisional,sma_20")
