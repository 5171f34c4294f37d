"""The whole ingest-to-bars pipeline as real processes over ipc://: the fake Dukascopy
server → downloader → transformer → aggregator → resampler, in drain mode. Every store
must equal the reference computed directly from the raw responses (no sockets): decode,
merge, resample. This is the "every store is a pure function of its upstream" check."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.pipeline import pipeline, reference_days, wait_caught_up
from tests.support.wait import wait_for

SYMBOLS = ["EUR-USD", "USD-JPY"]
SIDES = ["BID", "ASK"]
START = dt.date(2026, 1, 5)
END = dt.date(2026, 1, 18)


@pytest.mark.timeout(240)
def test_drain_run_equals_direct_computation(tmp_path: Path, ipc_dir: Path) -> None:
    from barstream.services.aggregator.aggregate import merge
    from barstream.services.resampler.resample import resample_all
    from barstream.shared.alignment import PRESETS
    from barstream.shared.timeframe import Timeframe

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


@pytest.mark.timeout(240)
def test_live_pipeline_to_consumer(tmp_path: Path, ipc_dir: Path) -> None:
    """Live day under a fast simulated clock through all five services to a consumer that
    streams 1m and 5m bars: the consumer's series equals the gateway's, and every store is a
    pure function of its upstream store (checked after everything is stopped)."""
    import signal
    import threading

    from barstream.services.aggregator.aggregate import merge
    from barstream.services.gateway.client import GatewayClient
    from barstream.services.gateway.follower import BarUpdate
    from barstream.services.resampler.resample import resample_all
    from barstream.shared.alignment import PRESETS
    from barstream.shared.record import FLAG_PROVISIONAL
    from barstream.shared.timeframe import Timeframe

    tfs = ["5m", "15m", "1h", "4h", "1d", "1W"]
    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID"],
        start_date=dt.date(2026, 1, 12),
        end_date=None,
        timeframes=tfs,
    ) as p:
        p.write_config(live_poll_interval_s=0.1, refetch_days=0)
        # 2026-01-14 20:30 UTC, 5 simulated minutes per second: minutes keep forming.
        p.start_fake("--start", "2026-01-14T20:30:00", "--speed", "300")
        for name in ("gateway", "resampler", "aggregator", "transformer", "downloader"):
            p.start(name)  # reverse order: every service tolerates an absent upstream

        seen: dict[str, list[BarUpdate]] = {"1m": [], "5m": []}
        stop = threading.Event()
        errors: list[BaseException] = []

        def consume(tf: str) -> None:
            try:
                with GatewayClient(
                    f"ipc://{ipc_dir}/gw-pub", f"ipc://{ipc_dir}/gw-req", timeout_s=10
                ) as gw:
                    for item in gw.stream("EUR-USD", tf, history=50, timeout_s=10):
                        seen[tf].append(item)
            except TimeoutError:
                if not stop.is_set():  # quiet while bars should flow
                    errors.append(
                        AssertionError(f"{tf}: no update for 10 s while the pipeline ran")
                    )
            except BaseException as e:  # surfaced below
                errors.append(e)

        def latest_ms(tf: str) -> int:
            items = list(seen[tf])
            return max((int(i.records["ts_ms"][-1]) for i in items if len(i.records)), default=0)

        def delivered(tf: str) -> bool:
            """The consumer holds the gateway's series (or saw a gap: asserted below)."""
            items = list(seen[tf])
            if not items:
                return False
            gateway_store = p.store_records("gateway", f"EUR-USD/BID/{tf}")
            series, gap = replay(gateway_store, items)
            return gap is not None or series.tobytes() == gateway_store.tobytes()

        threads = [threading.Thread(target=consume, args=(tf,), daemon=True) for tf in seen]
        for t in threads:
            t.start()
        live_until = dt.datetime(2026, 1, 14, 21, 0, tzinfo=dt.UTC).timestamp() * 1000
        wait_for(  # history, then live minutes (30 simulated minutes after the start)
            lambda: errors or all(latest_ms(tf) >= live_until for tf in seen),
            60,
            what="the consumers to receive the bars of 21:00 (live minutes)",
            on_timeout=lambda: f"latest bars: { {tf: latest_ms(tf) for tf in seen} }",
        )
        p.freeze_clock()
        chain = [
            ("transformer", "downloader"),
            ("aggregator", "transformer"),
            ("resampler", "aggregator"),
            ("gateway", "resampler"),
        ]
        wait_caught_up(p, chain, 90)
        p.kill("downloader", signal.SIGTERM)
        wait_for(  # the last publications reach the consumers
            lambda: errors or all(delivered(tf) for tf in seen),
            30,
            what="the consumers to hold the gateway's series",
        )
        stop.set()  # from now on a quiet stream ends the consumer
        for t in threads:
            t.join(timeout=40)
        assert not errors, errors
        for name in ("transformer", "aggregator", "resampler", "gateway"):
            p.kill(name, signal.SIGTERM)
            assert p.procs[name].returncode == 0, f"{name}:\n{p.log_tail(name)}"

        days = p.store_records("transformer", "EUR-USD/BID/days")
        _, m1 = merge(np.zeros(0, days.dtype), days, 0)
        assert p.store_records("aggregator", "EUR-USD/BID/1m").tobytes() == m1.tobytes()
        assert (m1["flags"][-1] & FLAG_PROVISIONAL) != 0, "the live minute should be provisional"
        assert p.store_records("resampler", "EUR-USD/BID/1m").tobytes() == m1.tobytes()
        expected = resample_all(m1, [Timeframe.parse(t) for t in tfs], PRESETS["utc"])
        for timeframe, bars in expected.items():
            key = f"EUR-USD/BID/{timeframe}"
            assert p.store_records("resampler", key).tobytes() == bars.tobytes(), key
            assert p.store_records("gateway", key).tobytes() == bars.tobytes(), key

        for tf, items in seen.items():
            assert items, f"consumer of {tf} received nothing"
            gateway_store = p.store_records("gateway", f"EUR-USD/BID/{tf}")
            series, gap = replay(gateway_store, items)
            assert gap is None, f"{tf}: gap before offset {gap}"
            assert series.tobytes() == gateway_store.tobytes(), (
                f"{tf}: consumer series differs from the gateway's"
            )
            assert sum(1 for i in items if i.replaces) > 0, (
                f"{tf}: no provisional update was streamed"
            )


def replay(store: np.ndarray, items: list[Any]) -> tuple[np.ndarray, int | None]:
    """A consumer's series: ``store``'s records before its first item, then every item
    applied in order; and the offset of the first gap (an item past the end), if any."""
    series = store[: items[0].start_offset].copy()
    for item in items:
        if item.start_offset > len(series):
            return series, item.start_offset
        series = np.concatenate([series[: item.start_offset], item.records])
    return series, None
