"""barstream status at scale: 42 instruments × 2 sides × 10 timeframes of real /metrics text
(the services' own Metrics registries, rendered by prometheus_client and parsed back) fit one
screen by default; --all lists every store; filters; timeframes by duration; the upstream
lag gauge never turns into a store row."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from barstream import cli, status, status_view
from barstream.shared.config import SERVICES
from barstream.shared.metrics import DownloaderMetrics, Metrics, TransformerMetrics, stream_labels
from barstream.shared.timeframe import DAY_MS, MINUTE_MS
from tests.support.ops import free_port, pipeline_config, write_config

SYMBOLS = [f"S{i:02d}-USD" for i in range(42)]
SIDES = ("BID", "ASK")
TIMEFRAMES = ["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y"]
NOW_MS = 1_782_302_400_000  # 2026-06-24 12:00 UTC
# What each service stores (the timeframe part of its keys) and what its upstream serves.
STORES = {
    "downloader": ["fetch"],
    "transformer": ["days"],
    "aggregator": ["1m"],
    "resampler": TIMEFRAMES,
    "features": ["1m.core", "1h.core"],
    "gateway": TIMEFRAMES,
}
UPSTREAM = {"transformer": ["fetch"], "aggregator": ["days"], "resampler": ["1m"]}
UPSTREAM["gateway"] = UPSTREAM["features"] = TIMEFRAMES


def keys(tfs: list[str]) -> list[str]:
    return [f"{s}/{side}/{tf}" for s in SYMBOLS for side in SIDES for tf in tfs]


def scraped(
    name: str,
    *,
    gaps: dict[str, int] | None = None,
    held: tuple[str, ...] = (),
    behind: dict[str, int] | None = None,
    lag_s: float = 0.0,
    silent_s: float = 0.5,
    stale: tuple[str, ...] = (),
) -> status.ServiceStatus:
    """One service's status from the text its Metrics registry exposes."""
    m = Metrics(name)
    for i, key in enumerate(keys(STORES[name])):
        m.store_length.labels(*stream_labels(key)).set(1000 + i)
        m.committed_length.labels(*stream_labels(key)).set(1000 + i)
        last = NOW_MS - (3 * DAY_MS if key in stale else MINUTE_MS)
        m.last_bar_time.labels(*stream_labels(key)).set(last / 1000)
    for key in keys(UPSTREAM.get(name, [])):
        m.feed_lag_records.labels(*stream_labels(key)).set((behind or {}).get(key, 0))
    m.feed_lag_seconds.set(lag_s)
    m.upstream_heartbeat_age.set(silent_s)
    m.records_in.inc(12345)
    if name == "downloader":
        g = DownloaderMetrics(m).gaps
        for key in keys(["fetch"]):
            g.labels(*stream_labels(key)).set((gaps or {}).get(key, 0))
    if name == "transformer":
        t = TransformerMetrics(m)
        for key in keys(["days"]):
            t.held_streams.labels(*stream_labels(key)).set(1 if key in held else 0)
    text = generate_latest(m.registry).decode()
    return status.service_status(name, f"http://x/{name}", status.parse_metrics(text))


@pytest.fixture(scope="module")
def statuses() -> list[status.ServiceStatus]:
    return [
        scraped("downloader", gaps={"S03-USD/ASK/fetch": 2}),
        scraped("transformer", held=("S05-USD/BID/days",)),
        scraped("aggregator", silent_s=45.0),
        scraped("resampler", stale=("S09-USD/BID/1h",)),
        scraped("features"),
        scraped("gateway", behind={"S01-USD/BID/1m": 7, "S02-USD/ASK/1d": 1}, lag_s=12.0),
    ]


def test_default_view_fits_one_screen_and_names_what_needs_attention(
    statuses: list[status.ServiceStatus],
) -> None:
    text = status_view.render(statuses)
    lines = text.splitlines()
    assert len(lines) <= 40, text
    assert max(len(line) for line in lines) <= 125, text
    for name in SERVICES:
        assert sum(line.startswith(name) for line in lines) == 1, (name, text)
    assert "42 symbol(s) × 2 side(s) (BID, ASK)" in text
    assert "timeframes 1m 5m 15m 30m 1h 4h 1d 1W 1M 1Y;" in text
    head = next(i for i, line in enumerate(lines) if line.startswith("needs attention: 5"))
    table = lines[head + 2 : lines.index("", head)]
    row = {line.split()[1]: line for line in table if "/" in line}
    assert set(row) == {"S03-USD/ASK/fetch", "S05-USD/BID/days", "S09-USD/BID/1h"}, text
    assert "2 gap day(s)" in row["S03-USD/ASK/fetch"]
    assert "held by a bad payload" in row["S05-USD/BID/days"]
    assert "3.0 days behind the newest 1h" in row["S09-USD/BID/1h"]
    (silent,) = [line for line in table if line.split()[0] == "aggregator"]
    assert silent.split()[1] == "(service)" and "no upstream message for 45s" in silent
    (lag,) = [line for line in table if "behind upstream" in line]
    assert lag.split()[:2] == ["gateway", "(service)"]
    assert "12s behind upstream: 8 records, 2 streams" in lag
    # the service line carries the lag: 12 s, 8 records behind
    (gw,) = [line for line in lines if line.startswith("gateway")]
    assert gw.split()[6:8] == ["12.0", "8"], gw
    assert "faults: 2" in text  # the gap and the held stream; a lag is not a fault


def test_default_view_stays_one_screen_when_every_stream_needs_attention() -> None:
    many = [
        scraped("downloader", gaps={k: 1 for k in keys(["fetch"])}),
        scraped("transformer", held=tuple(keys(["days"]))),
        scraped("aggregator"),
        scraped("resampler"),
        scraped("features"),
        scraped("gateway"),
    ]
    text = status_view.render(many)
    assert len(text.splitlines()) <= 40, text
    # more than ATTENTION_ROWS items: one row per service and kind
    assert "needs attention: 168, by service and kind (--all lists each)" in text
    assert "downloader   gaps         84 stores: S00-USD/BID/fetch, S00-USD/ASK/fetch," in text
    assert "transformer  held         84 stores: S00-USD/BID/days," in text
    assert "faults: 168\n" in text and f"… {168 - status_view.FAULTS_SHOWN} more" in text
    full = status_view.render(many, full=True)
    assert sum("gap day(s)" in line for line in full.splitlines()) == 2 * 84  # table + faults


def test_all_lists_every_store_by_duration_and_no_upstream_row(
    statuses: list[status.ServiceStatus],
) -> None:
    text = status_view.render(statuses, full=True)
    lines = text.splitlines()
    assert len(lines) > 1900
    for name in SERVICES:
        head = next(i for i, line in enumerate(lines) if line.startswith(f"{name}: stream"))
        block = lines[head + 1 : lines.index("", head)]
        got = [line.split()[0] for line in block]
        assert len(got) == len(keys(STORES[name])), name
        assert set(got) == set(keys(STORES[name])), name  # own stores only: no upstream key
        if name == "resampler":
            eur = [k.split("/")[2] for k in got if k.startswith("S00-USD/BID/")]
            assert eur == TIMEFRAMES
            assert got[:3] == ["S00-USD/BID/1m", "S00-USD/BID/5m", "S00-USD/BID/15m"]
            assert got[10] == "S00-USD/ASK/1m"  # BID before ASK, then the next symbol
    # the transformer never shows the downloader's …/fetch keys; the gateway's lag is its own
    assert not any("/fetch" in line for line in lines if line.startswith("transformer"))
    i = lines.index("gateway: behind its upstream on 2 stream(s), records:")
    assert lines[i + 1].split() == ["S01-USD/BID/1m", "7"]
    assert lines[i + 2].split() == ["S02-USD/ASK/1d", "1"]
    # the parsed status keeps upstream lag apart from the stores
    gw = statuses[-1]
    assert all(k.endswith("/days") for k in statuses[1].streams)
    assert set(statuses[1].upstream_lag) == set(keys(["fetch"]))
    assert gw.behind_records == 8


def test_filters_by_symbol_and_service(statuses: list[status.ServiceStatus]) -> None:
    one = status.select(statuses, symbols={"S05-USD"})
    text = status_view.render(one, full=True)
    keys_shown = {w for line in text.splitlines() for w in line.split() if w.count("/") == 2}
    assert keys_shown and all(k.startswith("S05-USD/") for k in keys_shown), keys_shown
    assert "S05-USD/ASK/1Y" in keys_shown
    assert "1 symbol(s) (S05-USD) × 2 side(s)" in text
    assert "held by a bad payload" in text and "gap day" not in text
    gateway = status.select(statuses, services={"gateway"})
    assert [s.name for s in gateway] == ["gateway"]
    lines = status_view.render(gateway).splitlines()
    assert [line.split()[0] for line in lines[1:2]] == ["gateway"]
    assert "faults: none" in lines
    both = status.select(statuses, services={"downloader"}, symbols={"S03-USD"})
    assert list(both[0].streams) == ["S03-USD/BID/fetch", "S03-USD/ASK/fetch"]
    assert both[0].faults == ["downloader: S03-USD/ASK/fetch: 2 gap day(s)"]


def test_timeframes_sort_by_duration() -> None:
    shuffled = TIMEFRAMES[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=status.timeframe_order) == TIMEFRAMES
    assert sorted(["15m", "1M", "1W", "fetch", "90m", "2h"], key=status.timeframe_order) == [
        "fetch",
        "15m",
        "90m",
        "2h",
        "1W",
        "1M",
    ]


def test_cli_status_filters_and_refuses_an_unknown_symbol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = pipeline_config(tmp_path, tmp_path / "data", fake_port=free_port())
    config = write_config(tmp_path / "c.toml", data)
    base = ["status", "-c", str(config), "--var", str(tmp_path / "var")]
    assert cli.main([*base, "--service", "gateway", "--service", "downloader"]) == 1  # down
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[1:3]]
    assert rows == ["downloader", "gateway"] and "transformer" not in out
    assert cli.main([*base, "--json", "--symbol", "EUR-USD", "--service", "resampler"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert list(got["services"]) == ["resampler"] and not got["ok"]
    assert cli.main([*base, "--symbol", "XAU-USD"]) == 2
    assert "--symbol = 'XAU-USD': not in pipeline.symbols" in capsys.readouterr().err


def test_by_stream_joins_the_three_labels() -> None:
    samples: status.Samples = {
        "g": [
            ({"symbol": "EUR-USD", "side": "BID", "timeframe": "1m"}, 1.0),
            ({"symbol": "EUR-USD", "side": "ASK", "timeframe": "fetch"}, 2.0),
            ({"symbol": "nodelimiter", "side": "", "timeframe": ""}, 3.0),  # not a key
            ({"stream": "USD-JPY/BID/5m"}, 4.0),  # a service before issue 17
        ]
    }
    assert status.by_stream(samples, "g") == {
        "EUR-USD/BID/1m": 1.0,
        "EUR-USD/ASK/fetch": 2.0,
        "nodelimiter": 3.0,
        "USD-JPY/BID/5m": 4.0,
    }
