"""The features stage as a real process between the resampler and the gateway: its stores
equal the batch computation over the resampler's bars, byte for byte, and the gateway serves
them as bars joined with their features (docs/FORMAT.md §11)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from tests.support.pipeline import Pipeline, core_features, pipeline

START = dt.date(2026, 1, 5)
END = dt.date(2026, 1, 9)


def expected_store(p: Pipeline, cfg_path: Path, key: str) -> tuple[bytes, int]:
    """What the feature store ``key`` must read: the batch computation over the resampler's
    bars of its timeframe."""
    from barstream.services.features import layout
    from barstream.services.features.engine import compute
    from barstream.services.features.service import feature_keys
    from barstream.shared import config

    fs = feature_keys(config.load(cfg_path))[key]
    symbol, side, tf_set = key.split("/")
    bars = p.store_records("resampler", f"{symbol}/{side}/{tf_set.split('.')[0]}")
    return layout.store_records(fs, bars, compute(fs, bars)).tobytes(), len(bars)


@pytest.mark.timeout(300)
def test_drain_run_features_equal_batch(tmp_path: Path, ipc_dir: Path) -> None:
    from barstream.services.features import layout
    from barstream.services.features.engine import compute
    from barstream.services.features.service import feature_keys
    from barstream.services.gateway.client import GatewayClient
    from barstream.shared import config

    with pipeline(
        tmp_path,
        ipc_dir,
        symbols=["EUR-USD"],
        sides=["BID", "ASK"],
        start_date=START,
        end_date=END,
        features=core_features(),
    ) as p:
        cfg_path = p.write_config()
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        p.drain_all()
        keys = feature_keys(config.load(cfg_path))
        assert len(keys) == 6  # 2 sides x 1m, 5m, 1h
        for key in keys:
            want, n = expected_store(p, cfg_path, key)
            least = {"1m": 5000, "5m": 1000, "1h": 80}[key.split("/")[2].split(".")[0]]
            assert n > least, f"{key}: only {n} bars"
            got = p.store_records("features", key)
            assert got.tobytes() == want, f"{key}: features store differs from the batch"
            assert p.store_records("gateway", key).tobytes() == want, f"{key}: gateway replica"

        # The gateway serves them: history with features = bars joined with their columns.
        p.start("gateway")
        with GatewayClient(f"ipc://{ipc_dir}/gw-pub", f"ipc://{ipc_dir}/gw-req") as gw:
            got = gw.history("EUR-USD", "1h", side="ASK", features="core")
            bars = p.store_records("resampler", "EUR-USD/ASK/1h")
            fs = keys["EUR-USD/ASK/1h.core"]
            feats = compute(fs, bars)
            assert len(got) == len(bars)
            assert got["close"].tobytes() == bars["close"].tobytes()
            for col in fs.outputs:
                np.testing.assert_array_equal(got[col], feats.column(col), err_msg=col)
            assert np.isnan(got["sma_20"][:19]).all() and not np.isnan(got["sma_20"][19:]).any()
            last = gw.history("EUR-USD", "1m", last=7, features="core")
            m1 = p.store_records("resampler", "EUR-USD/BID/1m")
            assert last["ts_ms"].tolist() == m1["ts_ms"][-7:].tolist()
            _, all_feats = layout.split(fs, p.store_records("features", "EUR-USD/BID/1m.core"))
            np.testing.assert_array_equal(
                last["rsi_14.value"], all_feats.column("rsi_14.value")[-7:]
            )
