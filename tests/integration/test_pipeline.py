"""The whole ingest-to-bars pipeline as real processes over ipc://: the fake Dukascopy
server → downloader → transformer → aggregator → resampler, in drain mode. Every store
must equal the reference computed directly from the raw responses (no sockets): decode,
merge, resample. This is the "every store is a pure function of its upstream" check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from tests.support.pipeline import pipeline, reference_days

SYMBOLS = ["EUR-USD", "USD-JPY"]
SIDES = ["BID", "ASK"]
START = dt.date(2026, 1, 5)
END = dt.date(2026, 1, 18)


@pytest.mark.timeout(240)
def test_drain_run_equals_direct_computation(tmp_path: Path, ipc_dir: Path) -> None:
    from services.aggregator.aggregate import merge
    from services.resampler.resample import resample_all
    from shared.timeframe import PRESETS, Timeframe

    with pipeline(
        tmp_path, ipc_dir, symbols=SYMBOLS, sides=SIDES, start_date=START, end_date=END
    ) as p:
        p.write_config()
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        for name in ("downloader", "transformer", "aggregator", "resampler"):
            p.start(name, "--drain")
        for name in ("downloader", "transformer", "aggregator", "resampler"):
            rc = p.wait(name, 180)
            assert rc == 0, f"{name} exited {rc}:\n{p.log_tail(name)}"

        for symbol in SYMBOLS:
            for side in SIDES:
                where = f"{symbol}/{side}"
                days = reference_days(tmp_path / "data", symbol, side, START, END)
                got_days = p.store_records("transformer", f"{where}/days")
                assert len(days) > 5000, f"{where}: suspiciously few minutes ({len(days)})"
                assert got_days.tobytes() == days.tobytes(), f"{where}: transformer store differs"

                _, m1 = merge(np.zeros(0, days.dtype), days, 0)
                got_m1 = p.store_records("aggregator", f"{where}/1m")
                assert got_m1.tobytes() == m1.tobytes(), f"{where}: aggregator 1m differs"
                assert p.store_records("resampler", f"{where}/1m").tobytes() == m1.tobytes()

                expected = resample_all(
                    m1, [Timeframe.parse(t) for t in p.timeframes], PRESETS["utc"]
                )
                for tf, bars in expected.items():
                    got = p.store_records("resampler", f"{where}/{tf}")
                    assert got.tobytes() == bars.tobytes(), f"{where}/{tf}: resampler store differs"
