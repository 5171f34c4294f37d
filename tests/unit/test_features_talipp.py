"""The features engine against talipp (an incremental indicator library) where the two
definitions agree, on real EUR-USD 1h bars (HistData 2019 resampled) and Dukascopy minutes.

Agree: SMA, EMA (SMA seed), WMA, MACD (EMA lines, EMA signal with SMA seed), Bollinger
(population deviation), CCI (0.015, mean deviation), ROC, Donchian, stochastic and Williams %R
where the window is not flat (talipp gives 100 / the previous value there; we flag them not
valid), OBV up to talipp's start value (it starts at the first volume, we at 0), VWAP over one
UTC day (talipp's is not anchored). Differ, so not compared: RSI, ATR and ADX (talipp seeds
Wilder's averages over n-1 changes / includes the first bar's high - low; we follow Wilder's
first n changes from bar 1, as the reference loops in test_features_real.py check).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest

talipp = pytest.importorskip("talipp.indicators")
from talipp.ohlcv import OHLCV  # noqa: E402

from barstream.services.features.engine import compute  # noqa: E402
from barstream.services.features.spec import feature_set  # noqa: E402
from barstream.services.resampler.resample import resample  # noqa: E402
from barstream.shared.alignment import UTC  # noqa: E402
from tests.support.bi5 import day_path, read_candles  # noqa: E402
from tests.unit.test_features_real import _histdata_2019  # noqa: E402

pytestmark = [pytest.mark.real_data, pytest.mark.timeout(300)]  # a cold numba compile


@pytest.fixture(scope="module")
def hours(real_data: Path) -> np.ndarray:
    return resample(_histdata_2019(real_data), "1h", UTC)


def _close(ours: np.ndarray, valid: np.ndarray, theirs: list[Any]) -> None:
    t = np.array([np.nan if x is None else float(x) for x in theirs])
    both = valid & ~np.isnan(t)
    assert both.sum() > 0.9 * valid.sum() > 0
    scale = np.maximum(np.abs(t[both]), np.median(np.abs(t[both])))
    rel = np.abs(ours[both] - t[both]) / scale
    assert float(rel.max()) <= 1e-9, float(rel.max())


def _ohlcv(bars: np.ndarray) -> list[OHLCV]:
    return [
        OHLCV(
            float(b["open"]),
            float(b["high"]),
            float(b["low"]),
            float(b["close"]),
            float(b["volume"]),
        )
        for b in bars
    ]


def test_price_indicators_match_talipp(hours: np.ndarray) -> None:
    spec = [
        {"kind": k}
        for k in ("sma", "ema", "wma", "macd", "bbands", "cci", "roc", "donchian", "stoch", "willr")
    ]
    f = compute(feature_set("t", ["1h"], spec), hours)
    c = [float(x) for x in hours["close"]]
    ohlcv = _ohlcv(hours)

    def col(name: str) -> tuple[np.ndarray, np.ndarray]:
        return f.column(name), f.valid[f.columns.index(name)]

    _close(*col("sma_20"), list(talipp.SMA(20, c)))
    _close(*col("ema_20"), list(talipp.EMA(20, c)))
    _close(*col("wma_20"), list(talipp.WMA(20, c)))
    m = list(talipp.MACD(12, 26, 9, c))
    _close(*col("macd_12_26_9.line"), [x.macd if x else None for x in m])
    _close(*col("macd_12_26_9.signal"), [x.signal if x else None for x in m])
    _close(*col("macd_12_26_9.hist"), [x.histogram if x else None for x in m])
    bb = list(talipp.BB(20, 2.0, c))
    _close(*col("bbands_20_2p0.mid"), [x.cb if x else None for x in bb])
    _close(*col("bbands_20_2p0.upper"), [x.ub if x else None for x in bb])
    _close(*col("bbands_20_2p0.lower"), [x.lb if x else None for x in bb])
    _close(*col("cci_20_0p015"), list(talipp.CCI(20, ohlcv)))
    _close(*col("roc_10.roc"), list(talipp.ROC(10, c)))
    dc = list(talipp.DonchianChannels(20, ohlcv))
    _close(*col("donchian_20.upper"), [x.ub if x else None for x in dc])
    _close(*col("donchian_20.lower"), [x.lb if x else None for x in dc])
    _close(*col("donchian_20.mid"), [x.cb if x else None for x in dc])
    st = list(talipp.Stoch(14, 3, ohlcv))
    _close(*col("stoch_14_3.k"), [x.k if x else None for x in st])
    _close(*col("stoch_14_3.d"), [x.d if x else None for x in st])
    _close(*col("willr_14"), list(talipp.Williams(14, ohlcv)))


def test_volume_indicators_match_talipp(real_data: Path) -> None:
    day = dt.date(2019, 2, 4)
    m = read_candles(
        day_path(real_data / "dukascopy-bi5", "EURUSD", day),
        period_start=dt.datetime.combine(day, dt.time(0)),
    )
    m = m[m["volume"] > 0]
    f = compute(feature_set("t", ["1m"], [{"kind": "obv"}, {"kind": "vwap"}]), m)
    ohlcv = _ohlcv(m)
    theirs = np.array(list(talipp.OBV(ohlcv)), dtype=float) - float(m["volume"][0])
    _close(f.column("obv"), f.valid[0], list(theirs))
    _close(f.column("vwap_utc_day.value"), f.valid[1], list(talipp.VWAP(ohlcv)))
