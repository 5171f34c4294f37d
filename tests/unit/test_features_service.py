"""The features stage's handler against the batch definition, in process (no sockets): for
random bar series, random revisions, provisional updates, truncations and restarts, the
store it writes through ``Service.apply`` equals, byte for byte, the batch computation over
the upstream bars (``layout.store_records`` of ``engine.compute``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barstream.services.features import layout
from barstream.services.features.engine import compute
from barstream.services.features.service import Features, feature_keys
from barstream.shared import config
from barstream.shared import protocol as p
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED, RECORD_DTYPE

SET = """
[[features]]
name = "mix"
timeframes = ["1m", "5m"]
indicators = [
  { kind = "returns" }, { kind = "sma", params = { period = 5 } },
  { kind = "ema", params = { period = 4 } }, { kind = "rsi", params = { period = 3 } },
  { kind = "macd", params = { fast = 3, slow = 6, signal = 2 } },
  { kind = "bbands", params = { period = 4 } }, { kind = "atr", params = { period = 3 } },
  { kind = "stoch", params = { k = 4, d = 2 } }, { kind = "cci", params = { period = 4 } },
  { kind = "zscore", params = { period = 4 } }, { kind = "donchian", params = { period = 3 } },
  { kind = "obv" }, { kind = "vwap" }, { kind = "adx", params = { period = 3 } },
]
"""


def make_config(tmp: Path) -> config.Config:
    path = tmp / "c.toml"
    path.write_text(
        f'[pipeline]\ndata_dir = "{tmp / "data"}"\nsymbols = ["EUR-USD"]\n'
        f'[resampler]\ntimeframes = ["5m"]\n'
        f'[features_stage.endpoints]\nfeed = "ipc://{tmp}/f"\nupstream = "ipc://{tmp}/r"\n'
        "metrics_port = 0\n" + SET
    )
    return config.load(path)


def bars(n: int, seed: int, t0: int = 1_767_571_200_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(n, RECORD_DTYPE)
    close = 1.1 + np.cumsum(rng.normal(0, 1e-4, n))
    out["ts_ms"] = t0 + 60_000 * np.arange(n)
    out["open"] = close - rng.normal(0, 5e-5, n)
    out["close"] = close
    out["high"] = np.maximum(out["open"], close) + np.abs(rng.normal(0, 5e-5, n))
    out["low"] = np.minimum(out["open"], close) - np.abs(rng.normal(0, 5e-5, n))
    out["volume"] = rng.integers(1, 50, n)
    return out


class Upstream:
    """The resampler's store as the test keeps it: "from X it now reads R"."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.bars = np.zeros(0, RECORD_DTYPE)

    def batch(self, start: int, records: np.ndarray) -> p.Batch:
        self.bars = np.concatenate([self.bars[:start], records])
        return p.Batch(
            conn=1,
            stream=self.key,
            store_id="00",
            generation=0,
            start=start,
            count=len(records),
            end=len(self.bars),
        )


def check(svc: Features, up: Upstream, cfg: config.Config) -> None:
    key = up.key + ".mix"
    fs = feature_keys(cfg)[key]
    want = layout.store_records(fs, up.bars, compute(fs, up.bars))
    got = svc.stores.stores[key].records
    assert got.tobytes() == want.tobytes(), f"{key}: store differs from the batch"


ops = st.lists(
    st.tuples(
        st.sampled_from(["append", "provisional", "revise", "truncate", "restart", "forget"]),
        st.integers(1, 40),
        st.integers(0, 2**31),
    ),
    min_size=3,
    max_size=14,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=st.integers(0, 120), steps=ops)
def test_incremental_store_equals_batch(
    tmp_path_factory: object, first: int, steps: list[tuple[str, int, int]]
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        tmp = Path(d)
        cfg = make_config(tmp)
        svc = Features(cfg, serve_metrics=False)
        up = Upstream("EUR-USD/BID/1m")
        series = bars(first + 2000, seed=first)
        pos = first

        def feed(start: int, records: np.ndarray) -> None:
            svc.apply(svc.handle(up.batch(start, records), records, []), commit=False)

        try:
            feed(0, series[:first])
            check(svc, up, cfg)
            for op, k, seed in steps:
                n = len(up.bars)
                if op == "append":
                    feed(n, series[pos : pos + k])
                    pos += k
                elif op == "provisional" and n:
                    last = up.bars[-1:].copy()
                    if not last["flags"][0] & FLAG_PROVISIONAL:
                        last = series[pos : pos + 1].copy()
                        pos += 1
                        at = n
                    else:
                        at = n - 1
                    last["flags"] |= FLAG_PROVISIONAL
                    last["close"] += (seed % 7 - 3) * 1e-5
                    last["high"] = max(last["high"][0], last["close"][0])
                    last["low"] = min(last["low"][0], last["close"][0])
                    feed(at, last)
                elif op == "revise" and n:
                    x = seed % n
                    new = up.bars[x:].copy()
                    new["flags"] &= ~np.uint16(FLAG_PROVISIONAL)
                    new["flags"] |= FLAG_REVISED
                    new["close"] += 1e-5
                    new["high"] = np.maximum(new["high"], new["close"])
                    feed(x, new)
                elif op == "truncate" and n:
                    x = max(0, n - k)
                    feed(x, up.bars[x : x + max(0, n - x - k)].copy())
                elif op == "restart":
                    svc.commit()
                    asyncio.run(svc.close())
                    svc = Features(cfg, serve_metrics=False)
                elif op == "forget":
                    svc.forget(up.key)
                check(svc, up, cfg)
        finally:
            asyncio.run(svc.close())
