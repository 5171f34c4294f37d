"""``[[features]]`` in the configuration: valid sets load; every refusal names its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from barstream.services.features.spec import KINDS, feature_set, from_config
from barstream.shared import config
from barstream.shared.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _cfg(*indicators: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"features": [{"name": "core", "indicators": list(indicators), **extra}]}


def test_demo_config_core_set_has_every_kind() -> None:
    cfg = config.load(REPO / "config" / "demo.toml")
    (core,) = cfg.features
    assert core.name == "core" and core.timeframes == ["1m", "5m", "1h"]
    assert {i.kind for i in core.indicators} == set(KINDS) - {"wma"} | {"ema"}
    fs = feature_set(
        core.name, core.timeframes, [{"kind": i.kind, "params": i.params} for i in core.indicators]
    )
    assert fs.columns[:3] == ("returns_1.simple", "returns_1.log", "sma_20")
    assert "macd_12_26_9.ema_fast" in fs.columns and "macd_12_26_9.ema_fast" not in fs.outputs
    assert fs.n_groups == -(-len(fs.columns) // 6)
    assert from_config(core) == fs


def test_defaults_and_names() -> None:
    cfg = config.from_dict(
        _cfg({"kind": "rsi"}, {"kind": "ema", "params": {"period": 5}, "name": "fast"})
    )
    fs = cfg.features[0]
    assert fs.timeframes == ["1m"]
    s = feature_set(
        fs.name,
        fs.timeframes,
        [{"kind": i.kind, "params": i.params, "name": i.name} for i in fs.indicators],
    )
    assert s.columns == ("rsi_14.value", "rsi_14.avg_gain", "rsi_14.avg_loss", "fast")
    assert s.outputs == ("rsi_14.value", "fast")
    assert config.default().features == []


@pytest.mark.parametrize(
    ("data", "key", "why"),
    [
        (
            _cfg({"kind": "sma"}, {"kind": "rsi"}, {"kind": "ema", "params": {"period": 0}}),
            "features[0].indicators[2].params.period",
            "must be >= 1",
        ),
        (_cfg({"kind": "smaa"}), "features[0].indicators[0].kind", "unknown kind"),
        (
            _cfg({"kind": "sma", "params": {"length": 3}}),
            "features[0].indicators[0].params.length",
            "not a parameter of sma",
        ),
        (
            _cfg({"kind": "sma", "params": {"period": "3"}}),
            "features[0].indicators[0].params.period",
            "must be an integer",
        ),
        (
            _cfg({"kind": "sma", "params": {"period": True}}),
            "features[0].indicators[0].params.period",
            "must be an integer",
        ),
        (
            _cfg({"kind": "bbands", "params": {"k": -1.0}}),
            "features[0].indicators[0].params.k",
            "> 0",
        ),
        (
            _cfg({"kind": "bbands", "params": {"k": float("nan")}}),
            "features[0].indicators[0].params.k",
            "> 0",
        ),
        (
            _cfg({"kind": "macd", "params": {"fast": 30}}),
            "features[0].indicators[0].params.fast",
            "must be < slow",
        ),
        (
            _cfg({"kind": "volatility", "params": {"ddof": 2}}),
            "features[0].indicators[0].params.ddof",
            "0 or 1",
        ),
        (
            _cfg({"kind": "vwap", "params": {"anchor": "week"}}),
            "features[0].indicators[0].params.anchor",
            "utc_day",
        ),
        (
            _cfg({"kind": "sma"}, timeframes=["2h"]),
            "features[0].timeframes[0]",
            "not made by the pipeline",
        ),
        (
            _cfg({"kind": "sma"}, timeframes=["soon"]),
            "features[0].timeframes[0]",
            "not a timeframe",
        ),
        (_cfg({"kind": "sma"}, timeframes=[]), "features[0].timeframes", "at least one"),
        (_cfg(), "features[0].indicators", "at least one indicator"),
        (_cfg({"kind": "sma"}, {"kind": "sma"}), "features[0].indicators[1]", "same column label"),
        (
            _cfg({"kind": "sma", "colour": 1}),
            "features[0].indicators[0].colour",
            "not a configuration key",
        ),
        (_cfg({"params": {}}), "features[0].indicators[0]", "missing required field `kind`"),
        (_cfg({"kind": "sma", "name": "Bad-Name"}), "features[0].indicators[0].name", "lowercase"),
        (
            {
                "features": [
                    {"name": "a", "indicators": [{"kind": "obv"}]},
                    {"name": "a", "indicators": [{"kind": "obv"}]},
                ]
            },
            "features[1].name",
            "repeats features[0].name",
        ),
    ],
)
def test_refusals_name_the_key_path(data: dict[str, Any], key: str, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.from_dict(data)
    text = str(err.value)
    assert text.startswith(f"{key} = "), text
    assert why in text, text


def test_resampler_timeframes_are_accepted() -> None:
    cfg = config.from_dict(
        {"resampler": {"timeframes": ["2h"]}, **_cfg({"kind": "obv"}, timeframes=["2h", "1m"])}
    )
    assert cfg.features[0].timeframes == ["2h", "1m"]
