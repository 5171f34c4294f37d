"""examples/features_inference.py against a real live pipeline with features: it trains on
the gateway's history of EUR-USD 1m joined with set "core", then scores each newly closed
bar as it streams in; the latencies it prints are checked against clocks the test reads
itself (the wall clock and the fake upstream's simulated clock)."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.pipeline import REPO, core_features, pipeline
from tests.support.wait import wait_for

EXAMPLE = REPO / "examples" / "features_inference.py"
LINE = re.compile(
    r"^(?P<what>predict|rescore) bar=(?P<bar>\S+) close=(?P<close>[0-9.]+) "
    r"pred=(?P<pred>UP|DOWN) p_up=(?P<p>[0-9.]+) close_lag_s=(?P<lag>-?[0-9.]+) "
    r"recv_to_pred_ms=(?P<recv>[0-9.]+)$"
)


def run_example(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_example_help_and_no_gateway(ipc_dir: Path) -> None:
    """--help exits 0; a gateway that does not answer: exit 1 with a message, no traceback."""
    done = run_example("--help")
    assert done.returncode == 0 and "--max-bars" in done.stdout
    ends = ["--publish", f"ipc://{ipc_dir}/none-pub", "--requests", f"ipc://{ipc_dir}/none-req"]
    done = run_example(*ends, "--timeout", "1")
    assert done.returncode == 1, done
    assert "no reply" in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.timeout(300)
def test_example_inference_on_a_live_pipeline(tmp_path: Path, ipc_dir: Path) -> None:
    from barstream.client import GatewayClient, GatewayError

    pub, req = f"ipc://{ipc_dir}/gw-pub", f"ipc://{ipc_dir}/gw-req"
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID"],
        start_date=dt.date(2026, 1, 12),
        end_date=None,
        timeframes=["5m", "1h"],
        features=core_features(),
    ) as p:
        p.write_config(live_poll_interval_s=0.1, refetch_days=0)
        # 2026-01-14 20:30 UTC, 5 simulated minutes per wall second: minutes keep closing.
        p.start_fake("--start", "2026-01-14T20:30:00", "--speed", "300")
        names = ("gateway", "features", "resampler", "aggregator", "transformer", "downloader")
        for name in names:
            p.start(name)  # reverse order: every service tolerates an absent upstream

        def history_served() -> bool:
            with GatewayClient(pub, req, timeout_s=2) as gw:
                return len(gw.history("EUR-USD", "1m", last=2000, features="core")) >= 2000

        wait_for(
            history_served,
            150,
            what="the gateway to serve 2000 1m bars with features",
            every_s=0.5,
            ignore=(TimeoutError, GatewayError),
            on_timeout=lambda: "\n".join(f"--- {n}:\n{p.log_tail(n, 10)}" for n in names),
        )

        # A set the gateway does not serve: exit 1, and the message says which it serves.
        done = run_example(
            "EUR-USD", "1m", "--features", "nosuch", "--publish", pub, "--requests", req
        )
        assert done.returncode == 1, done
        assert "serves no feature topic EUR-USD/BID/1m.nosuch" in done.stderr, done.stderr
        assert "EUR-USD/BID/1m.core" in done.stderr, done.stderr

        ends = ["--max-bars", "5", "--stream-timeout", "60", "--publish", pub, "--requests", req]
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "EUR-USD", "1m", "--features", "core", *ends],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Each line as it comes, with the wall clock and the simulated clock when read.
        lines: list[tuple[str, float, int]] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append((line.rstrip("\n"), time.time(), int(p.stats()["sim_now_ms"])))  # type: ignore[call-overload]

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(10)
        assert proc.stderr is not None
        err = proc.stderr.read()
        elapsed = time.monotonic() - started
        assert rc == 0, f"exit {rc}; stderr:\n{err}\n{p.log_tail('gateway')}"
        assert "trained on EUR-USD/BID/1m.core" in err, err
        assert "Traceback" not in err, err

    parsed = [(LINE.match(text), wall, sim) for text, wall, sim in lines]
    assert all(m is not None for m, _, _ in parsed), [t for t, _, _ in lines]
    predicts = [(m, wall, sim) for m, wall, sim in parsed if m and m["what"] == "predict"]
    assert len(predicts) == 5, lines
    bar_ms = []
    for m, wall, sim in predicts:
        assert m is not None
        bar = dt.datetime.strptime(m["bar"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        close_s = bar.timestamp() + 60
        bar_ms.append(int(bar.timestamp() * 1000))
        # Its close-to-prediction lag is the wall clock minus the bar's close (open + 1m):
        # the line was read at most a few seconds after the prediction was made.
        assert -0.5 <= (wall - close_s) - float(m["lag"]) <= 5, (m.string, wall)
        # The bar had closed on the feed's (simulated) clock — a closed bar, not a
        # provisional one — and not long before (30 simulated minutes = 6 s at speed 300).
        assert 0 <= sim - close_s * 1000 <= 30 * 60_000, (m.string, sim)
        # Scoring one item takes well under a second.
        assert 0 <= float(m["recv"]) < 1000, m.string
        assert 0 <= float(m["p"]) <= 1
    assert bar_ms == sorted(bar_ms) and len(set(bar_ms)) == 5, bar_ms  # new bars, once each
    sim_lags = [(sim - b - 60_000) / 1000 for b, (_, _, sim) in zip(bar_ms, predicts, strict=True)]
    print(f"example: 5 predictions in {elapsed:.1f} s, simulated close lags {sim_lags} s")
    print("\n".join([err, *(t for t, _, _ in lines)]))
