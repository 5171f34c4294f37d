"""The features engine against textbook loops and talipp on real EUR-USD data.

Data: HistData EURUSD 2019 1m (../shared/data/real, README §3: BID, volume always 0; its clock
+5 h taken as UTC, which only moves the VWAP day boundary for both sides alike) — the first
30,000 minutes and the whole year resampled to 1h — and, for the volume indicators, Dukascopy's
BID 1m candles of 4–5 February 2019 (which have volumes). Every column of every indicator must
equal the reference (tests/support/indicators_ref.py) within 1e-9 relative, and its validity
must equal the reference's "defined" exactly (warm-up included).
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from barstream.services.features.engine import Features, compute
from barstream.services.features.spec import FeatureSet, feature_set
from barstream.services.resampler.resample import resample
from barstream.shared.alignment import UTC
from barstream.shared.record import RECORD_DTYPE
from tests.support import indicators_ref as ref
from tests.support.bi5 import day_path, read_candles

# the first test of a fresh checkout compiles the kernels (numba, ~20 s; cached afterwards)
pytestmark = [pytest.mark.real_data, pytest.mark.timeout(300)]
M1_BARS = 30_000
HOUR_MS = 3_600_000
SET: list[dict[str, Any]] = [
    {"kind": "returns"},
    {"kind": "returns", "params": {"period": 5}},
    {"kind": "sma"},
    {"kind": "ema"},
    {"kind": "ema", "params": {"period": 9}},
    {"kind": "wma"},
    {"kind": "rsi"},
    {"kind": "macd"},
    {"kind": "bbands"},
    {"kind": "atr"},
    {"kind": "stoch"},
    {"kind": "willr"},
    {"kind": "cci"},
    {"kind": "roc"},
    {"kind": "volatility"},
    {"kind": "volatility", "params": {"period": 30, "ddof": 0}},
    {"kind": "zscore"},
    {"kind": "donchian"},
    {"kind": "obv"},
    {"kind": "vwap"},
    {"kind": "adx"},
]


def _histdata_2019(real: Path) -> np.ndarray:
    path = real / "histdata-m1" / "HISTDATA_COM_ASCII_EURUSD_M12019.zip"
    if not path.is_file():
        pytest.skip(f"{path} is absent (HistData EURUSD 2019, ../shared/data/real README §3)")
    with zipfile.ZipFile(path) as z:
        text = z.read(z.namelist()[0]).replace(b" ", b";")
    t = np.loadtxt(io.BytesIO(text), delimiter=";", dtype=np.float64, ndmin=2)
    ymd, hms = t[:, 0].astype(np.int64), t[:, 1].astype(np.int64)
    days = (
        np.array(
            [dt.date(int(d) // 10000, int(d) // 100 % 100, int(d) % 100).toordinal() for d in ymd]
        )
        - dt.date(1970, 1, 1).toordinal()
    )
    secs = hms // 10000 * 3600 + hms // 100 % 100 * 60 + hms % 100
    bars = np.zeros(len(t), RECORD_DTYPE)
    bars["ts_ms"] = days * 86_400_000 + secs * 1000 + 5 * HOUR_MS
    for j, f in enumerate(("open", "high", "low", "close"), start=2):
        bars[f] = t[:, j]
    bars["volume"] = t[:, 6]
    bars["src_count"] = 1
    bars = bars[np.argsort(bars["ts_ms"], kind="stable")]  # one hour repeats in the file
    keep = np.r_[True, np.diff(bars["ts_ms"]) > 0]
    assert keep.sum() >= len(bars) - 60  # one repeated hour
    bars = bars[keep]
    assert np.all(np.diff(bars["ts_ms"]) > 0)
    return bars


@pytest.fixture(scope="module")
def year(real_data: Path) -> np.ndarray:
    return _histdata_2019(real_data)


@pytest.fixture(scope="module")
def dukascopy_minutes(real_data: Path) -> np.ndarray:
    days = []
    for day in (dt.date(2019, 2, 4), dt.date(2019, 2, 5)):
        m = read_candles(
            day_path(real_data / "dukascopy-bi5", "EURUSD", day),
            period_start=dt.datetime.combine(day, dt.time(0)),
        )
        days.append(m[m["volume"] > 0])
    return np.concatenate(days)


def fset(items: Sequence[dict[str, Any]] = SET) -> FeatureSet:
    return feature_set("t", ["1m"], items)


def references(bars: np.ndarray) -> dict[str, ref.Col]:
    """Every column of ``fset()`` from the textbook loops."""
    b: list[ref.Bar] = [
        (int(r["ts_ms"]), float(r["high"]), float(r["low"]), float(r["close"]), float(r["volume"]))
        for r in bars
    ]
    c = [x[3] for x in b]
    out: dict[str, ref.Col] = {}

    def put(label: str, names: Sequence[str], cols: Sequence[ref.Col]) -> None:
        for name, col in zip(names, cols, strict=True):
            out[f"{label}.{name}" if len(names) > 1 else label] = col

    put("returns_1", ["simple", "log"], ref.returns(c, 1))
    put("returns_5", ["simple", "log"], ref.returns(c, 5))
    put("sma_20", ["v"], [ref.sma(c, 20)])
    put("ema_20", ["v"], [ref.ema(c, 20)])
    put("ema_9", ["v"], [ref.ema(c, 9)])
    put("wma_20", ["v"], [ref.wma(c, 20)])
    put("rsi_14", ["value", "avg_gain", "avg_loss"], ref.rsi(c, 14))
    line, sig, hist = ref.macd(c, 12, 26, 9)
    put("macd_12_26_9", ["line", "signal", "hist", "ema_fast", "ema_slow"],
        [line, sig, hist, ref.ema(c, 12), ref.ema(c, 26)])  # fmt: skip
    put("bbands_20_2p0", ["mid", "upper", "lower", "pctb"], ref.bbands(c, 20, 2.0))
    put("atr_14", ["v"], [ref.atr(b, 14)])
    put("stoch_14_3", ["k", "d"], ref.stoch(b, 14, 3))
    put("willr_14", ["v"], [ref.willr(b, 14)])
    put("cci_20_0p015", ["v"], [ref.cci(b, 20, 0.015)])
    put("roc_10", ["roc", "momentum"], ref.roc(c, 10))
    put("volatility_20_1", ["v"], [ref.volatility(c, 20, 1)])
    put("volatility_30_0", ["v"], [ref.volatility(c, 30, 0)])
    put("zscore_20_1", ["v"], [ref.zscore(c, 20, 1)])
    put("donchian_20", ["upper", "lower", "mid"], ref.donchian(b, 20))
    put("obv", ["v"], [ref.obv(b)])
    out["vwap_utc_day.value"] = ref.vwap_utc_day(b)
    put("adx_14", ["adx", "plus_di", "minus_di"], ref.adx(b, 14))
    return out


def assert_column(feats: Features, name: str, want: Sequence[float | None], rtol: float = 1e-9) -> None:  # fmt: skip
    got = feats.column(name)
    valid = feats.valid[feats.columns.index(name)]
    defined = np.array([w is not None for w in want])
    bad = np.flatnonzero(valid != defined)
    assert not len(bad), f"{name}: validity differs first at bar {bad[0]} (ours {valid[bad[0]]})"
    assert np.all(np.isnan(got[~defined])), f"{name}: a value not valid is not NaN"
    w = np.array([x if x is not None else np.nan for x in want])[defined]
    g = got[defined]
    # relative to the value, or to the column's median magnitude where the value is near 0 (a
    # MACD line or a momentum crossing zero is a difference of two prices: 1e-9 of it is not
    # meaningful, ulps of the prices are)
    scale = np.maximum(np.abs(w), np.median(np.abs(w)) if len(w) else 0.0)
    rel = np.abs(g - w) / np.maximum(scale, 1e-300)
    exact = g == w
    worst = int(np.argmax(np.where(exact, 0, rel))) if len(w) else 0
    assert np.all(exact | (rel <= rtol)), f"{name}: bar {worst}: {g[worst]!r} != {w[worst]!r}"


def check_all(bars: np.ndarray) -> None:
    """Every output column (and the hidden state of RSI and MACD) against the reference."""
    feats = compute(fset(), bars)
    want = references(bars)
    assert set(fset().outputs) <= set(want) <= set(fset().columns)
    for name in want:
        assert_column(feats, name, want[name])


def test_every_indicator_equals_the_textbook_loops_on_1m(year: np.ndarray) -> None:
    bars = year[:M1_BARS]
    check_all(bars)
    feats = compute(fset(), bars)
    assert not feats.valid[feats.columns.index("vwap_utc_day.value")].any()  # HistData: volume 0


def test_every_indicator_equals_the_textbook_loops_on_1h(year: np.ndarray) -> None:
    hours = resample(year, "1h", UTC)
    assert 6000 < len(hours) < 6300
    check_all(hours)


def test_volume_indicators_on_dukascopy_minutes(dukascopy_minutes: np.ndarray) -> None:
    bars = dukascopy_minutes
    feats = compute(fset(), bars)
    want = references(bars)
    for name in ("obv", "vwap_utc_day.value"):
        assert_column(feats, name, want[name])
    day2 = np.flatnonzero(bars["ts_ms"] // 86_400_000 != bars["ts_ms"][0] // 86_400_000)[0]
    cum_v = feats.column("vwap_utc_day.cum_v")
    assert cum_v[day2] == bars["volume"][day2]  # the anchor restarts at the UTC day
    check_all(bars)
