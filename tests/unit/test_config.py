"""Configuration: defaults, derived endpoints, and errors that name key path and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from barstream.shared import config
from barstream.shared.errors import ConfigError


def test_defaults_are_valid_and_wired() -> None:
    cfg = config.default()
    assert cfg.pipeline.symbols == ["EUR-USD"]
    assert cfg.endpoints("downloader").feed == "tcp://127.0.0.1:7101"
    assert cfg.endpoints("transformer").upstream == "tcp://127.0.0.1:7101"
    assert cfg.endpoints("gateway").upstream == "tcp://127.0.0.1:7104"
    assert cfg.endpoints("downloader").upstream == ""
    ports = {s: cfg.endpoints(s).metrics_port for s in config.SERVICES}
    assert sorted(p or 0 for p in ports.values()) == list(range(9101, 9107))
    assert ports["gateway"] == 9105 and ports["features"] == 9106  # the gateway's kept its port
    assert cfg.endpoints("features").upstream == "tcp://127.0.0.1:7104"  # the resampler
    assert cfg.gateway.features_upstream == "tcp://127.0.0.1:7106"
    assert cfg.data_dir("aggregator") == Path("var/data/aggregator")
    assert cfg.streams() == [("EUR-USD", "BID")]


def test_bind_any_becomes_localhost_for_peers() -> None:
    cfg = config.from_dict({"downloader": {"endpoints": {"feed": "tcp://0.0.0.0:9000"}}})
    assert cfg.endpoints("transformer").upstream == "tcp://127.0.0.1:9000"


def test_load_toml(tmp_path: Path) -> None:
    path = tmp_path / "barstream.toml"
    path.write_text(
        '[pipeline]\nsymbols = ["EUR-USD", "DEU.IDX-EUR"]\nsides = ["BID", "ASK"]\n'
        'start_date = 2024-01-02\n[resampler]\nalignment = "mt4"\ntimeframes = ["5m", "1h"]\n'
    )
    cfg = config.load(path)
    assert cfg.source == str(path)
    assert cfg.streams()[-1] == ("DEU.IDX-EUR", "ASK")
    assert cfg.resampler.alignment == "mt4"


BAD = [
    ({"pipelin": {}}, "pipelin", "<unknown key>", "not a configuration key"),
    ({"pipeline": {"symbolz": []}}, "pipeline.symbolz", "<unknown key>", "not a configuration key"),
    ({"pipeline": {"symbols": "EUR-USD"}}, "pipeline.symbols", "EUR-USD", "Expected `array`"),
    (
        {"pipeline": {"symbols": ["EUR-USD", "eurusd"]}},
        "pipeline.symbols[1]",
        "eurusd",
        "symbols look like",
    ),
    ({"pipeline": {"symbols": []}}, "pipeline.symbols", [], "at least one"),
    (
        {"pipeline": {"symbols": ["EUR-USD", "EUR-USD"]}},
        "pipeline.symbols",
        ["EUR-USD", "EUR-USD"],
        "repeat",
    ),
    ({"pipeline": {"sides": ["MID"]}}, "pipeline.sides[0]", "MID", "BID or ASK"),
    (
        {"pipeline": {"commit_interval_s": "fast"}},
        "pipeline.commit_interval_s",
        "fast",
        "Expected `float`",
    ),
    ({"pipeline": {"commit_interval_s": 0}}, "pipeline.commit_interval_s", 0.0, "> 0"),
    ({"pipeline": {"start_date": "yesterday"}}, "pipeline.start_date", "yesterday", "date"),
    ({"downloader": {"requests_per_second": -1}}, "downloader.requests_per_second", -1.0, "> 0"),
    ({"downloader": {"burst": 0}}, "downloader.burst", 0, ">= 1"),
    ({"downloader": {"base_url": "ftp://x"}}, "downloader.base_url", "ftp://x", "http"),
    ({"downloader": {"end_date": "2020-01-01"}}, "downloader.end_date", "2020-01-01", "before"),
    ({"resampler": {"timeframes": ["5m", "7q"]}}, "resampler.timeframes[1]", "7q", ""),
    ({"resampler": {"alignment": "nyc"}}, "resampler.alignment", "nyc", "Invalid enum value"),
    (
        {
            "resampler": {
                "sessions": {
                    "DEU.IDX-EUR": [
                        {"name": "x", "timezone": "Mars/Base", "start": "08:00", "end": "17:30"}
                    ]
                }
            }
        },
        "resampler.sessions.DEU.IDX-EUR[0].timezone",
        "Mars/Base",
        "IANA",
    ),
    (
        {
            "resampler": {
                "sessions": {
                    "DEU.IDX-EUR": [
                        {"name": "x", "timezone": "Europe/Berlin", "start": "8:00", "end": "17:30"}
                    ]
                }
            }
        },
        "resampler.sessions.DEU.IDX-EUR[0].start",
        "8:00",
        "HH:MM",
    ),
    (
        {
            "resampler": {
                "sessions": {
                    "DEU.IDX-EUR": [
                        {
                            "name": "x",
                            "timezone": "Europe/Berlin",
                            "start": "08:00",
                            "end": "17:30",
                            "weekdays": [7],
                        }
                    ]
                }
            }
        },
        "resampler.sessions.DEU.IDX-EUR[0].weekdays[0]",
        7,
        "weekdays",
    ),
    ({"gateway": {"max_request_records": 0}}, "gateway.max_request_records", 0, ">= 1"),
    (
        {"aggregator": {"endpoints": {"metrics_port": 70000}}},
        "aggregator.endpoints.metrics_port",
        70000,
        "TCP port",
    ),
    (
        {"aggregator": {"endpoints": {"metrics_port": "x"}}},
        "aggregator.endpoints.metrics_port",
        "x",
        "Expected `int",
    ),
]


@pytest.mark.parametrize(("data", "key", "value", "why"), BAD, ids=[b[1] for b in BAD])
def test_errors_name_key_path_and_value(data, key, value, why) -> None:
    with pytest.raises(ConfigError) as e:
        config.from_dict(data, source="barstream.toml")
    err = e.value
    assert err.key == key
    assert err.value == value
    text = str(err)
    assert text.startswith(f"barstream.toml: {key} = {value!r}: "), text
    assert why in text
    assert text.count("fix the configuration file") == 1


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline\nsymbols = 1")
    with pytest.raises(ConfigError, match="not valid TOML") as e:
        config.load(bad)
    assert e.value.value == str(bad)


# -- pipeline.port_offset ------------------------------------------------------------------


def test_port_offset_moves_every_default_tcp_port() -> None:
    cfg = config.from_dict({"pipeline": {"port_offset": 100}})
    assert sorted(cfg.endpoints(s).feed for s in config.SERVICES) == [
        f"tcp://127.0.0.1:{p}" for p in range(7201, 7207)
    ]
    assert cfg.gateway.features_upstream == "tcp://127.0.0.1:7206"
    assert cfg.endpoints("transformer").upstream == "tcp://127.0.0.1:7201"
    assert cfg.endpoints("gateway").upstream == "tcp://127.0.0.1:7204"
    assert cfg.endpoints("downloader").upstream == ""
    assert sorted(cfg.endpoints(s).metrics_port or 0 for s in config.SERVICES) == list(
        range(9201, 9207)
    )
    assert (cfg.gateway.publish, cfg.gateway.requests) == (
        "tcp://127.0.0.1:7210",
        "tcp://127.0.0.1:7211",
    )
    assert cfg.fake_upstream.port == 8887
    assert cfg.downloader.base_url == "https://jetta.dukascopy.com"  # not the fake: unchanged


def test_port_offset_moves_configured_ports_and_the_fakes_base_url() -> None:
    cfg = config.from_dict(
        {
            "pipeline": {"port_offset": 5},
            "downloader": {
                "base_url": "http://127.0.0.1:8787",
                "endpoints": {"feed": "tcp://0.0.0.0:9000", "metrics_port": 0},
            },
            "transformer": {"endpoints": {"feed": "ipc:///tmp/t.feed", "metrics_port": 9500}},
            "aggregator": {"endpoints": {"upstream": "tcp://[::1]:6000", "feed": "tcp://*:*"}},
            "gateway": {"publish": "ipc:///tmp/gw.pub"},
            "fake_upstream": {"port": 8787},
        }
    )
    assert cfg.endpoints("downloader").feed == "tcp://0.0.0.0:9005"
    assert cfg.endpoints("transformer").upstream == "tcp://127.0.0.1:9005"
    assert cfg.endpoints("downloader").metrics_port == 0  # any free port stays any
    assert cfg.endpoints("transformer").feed == "ipc:///tmp/t.feed"
    assert cfg.endpoints("transformer").metrics_port == 9505
    assert cfg.endpoints("aggregator").upstream == "tcp://[::1]:6005"
    assert cfg.endpoints("aggregator").feed == "tcp://*:*"
    assert cfg.gateway.publish == "ipc:///tmp/gw.pub"
    assert cfg.gateway.requests == "tcp://127.0.0.1:7116"
    assert cfg.fake_upstream.port == 8792
    assert cfg.downloader.base_url == "http://127.0.0.1:8792"  # still the fake's


def test_no_offset_changes_nothing() -> None:
    assert config.from_dict({"pipeline": {"port_offset": 0}}) == config.default()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"pipeline": {"port_offset": -1}}, ">= 0"),
        ({"pipeline": {"port_offset": 60000}}, "moves downloader.endpoints.feed to port 67101"),
        (
            {"pipeline": {"port_offset": 500}, "gateway": {"endpoints": {"metrics_port": 65100}}},
            "moves gateway.endpoints.metrics_port to port 65600, past 65535",
        ),
        (
            {
                "pipeline": {"port_offset": 10},
                "transformer": {"endpoints": {"feed": "ipc:///x"}},
                "aggregator": {"endpoints": {"upstream": "tcp://h:65530"}},
            },
            "moves aggregator.endpoints.upstream to port 65540",
        ),
    ],
)
def test_a_bad_port_offset_names_the_key(data: dict[str, object], why: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.from_dict(data, source="barstream.toml")
    assert e.value.key == "pipeline.port_offset"
    assert why in str(e.value)


def test_tcp_listens_lists_every_port_a_run_binds_with_its_key() -> None:
    cfg = config.from_dict(
        {"pipeline": {"port_offset": 1}, "resampler": {"endpoints": {"feed": "ipc:///tmp/r"}}}
    )
    listens = {x.key: (x.host, x.port) for x in config.tcp_listens(cfg)}
    assert listens["downloader.endpoints.feed"] == ("127.0.0.1", 7102)
    assert "resampler.endpoints.feed" not in listens  # ipc://
    assert listens["gateway.endpoints.metrics_port"] == ("127.0.0.1", 9106)
    assert listens["gateway.publish"] == ("127.0.0.1", 7111)
    assert listens["gateway.requests"] == ("127.0.0.1", 7112)
    assert listens["fake_upstream.port"] == ("127.0.0.1", 8788)
    assert listens["api.port"] == ("127.0.0.1", 8791)  # the HTTP API (barstream serve)
    assert "fake_upstream.port" not in {x.key for x in config.tcp_listens(cfg, fake=False)}
    assert len(listens) == 5 + 6 + 2 + 1 + 1  # feeds (not the ipc one), metrics, gw, api, fake


def test_api_follows_the_gateway_and_the_port_offset() -> None:
    cfg = config.from_dict({"pipeline": {"port_offset": 10}})
    assert cfg.api.port == 8800
    assert cfg.api.gateway_publish == "tcp://127.0.0.1:7120"
    assert cfg.api.gateway_requests == "tcp://127.0.0.1:7121"
    other = config.from_dict(
        {"api": {"gateway_publish": "tcp://gw:7110", "gateway_requests": "tcp://gw:7111"}}
    )
    assert (other.api.gateway_publish, other.api.gateway_requests) == (
        "tcp://gw:7110",
        "tcp://gw:7111",
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("port", 70000), ("max_records", 0), ("gateway_connections", 0), ("keepalive_s", 0.0)],
)
def test_bad_api_values_name_their_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"api.{key}"):
        config.from_dict({"api": {key: value}})
