"""``/v1/bars?features=SET`` and ``/v1/stream?features=SET`` over real HTTP against a real
pipeline with features: a drain run (fake upstream → … → resampler → features → gateway,
config/demo.toml's set ``core`` on 1m, 5m, 1h), then the gateway serving it (at most
``GATEWAY_PAGE`` records a request, so a 1m feature history is several gateway pages) and
``barstream serve`` in front of it:

- every format but mt4 decodes back to exactly ``GatewayClient.history(..., features="core")``
  for 1m and 1h: ts_ms, OHLCV and flags bit for bit, every output's values bit for bit and
  its NaN (warm-up) positions;
- limit / start+end / provisional=false count bars, as without features;
- api.max_records bounds bars, not records (a second server whose limit is the 1h series'
  bar count answers it whole and refuses the longer 1m series, 413);
- format=mt4 with features → 400, an unknown set → 404 naming the sets served, a bad name
  → 400; the SSE stream's history event carries the same joined bars.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from barstream.client import GatewayClient
from tests.support import api as h
from tests.support.ops import free_port
from tests.support.pipeline import REPO, Pipeline, core_features, pipeline
from tests.support.wait import wait_for

SYMBOL, SIDE = "EUR-USD", "BID"
FORMATS = ("json", "ndjson", "csv", "arrow", "parquet")
PRICES = ("open", "high", "low", "close", "volume")
BAR_KEYS = ["ts_ms", "time", *PRICES, "flags", "provisional"]
#: gateway.max_request_records: the 1m feature topic (stride records a bar) is several pages.
GATEWAY_PAGE = 4000

Columns = dict[str, np.ndarray]


@dataclass
class Run:
    p: Pipeline
    base: str
    small: str
    small_max: int
    http: httpx.Client

    def gateway(self) -> GatewayClient:
        return GatewayClient(
            f"ipc://{self.p.ipc}/gw-pub", f"ipc://{self.p.ipc}/gw-req", timeout_s=10.0
        )

    def history(self, tf: str, **kw: Any) -> np.ndarray:
        with self.gateway() as gw:
            return gw.history(SYMBOL, tf, side=SIDE, features="core", **kw)

    def url(self, tf: str, base: str | None = None, kind: str = "bars") -> str:
        return f"{base or self.base}/v1/{kind}/{SYMBOL}/{SIDE}/{tf}"


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "barstream", "serve", "-c", str(config)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _answers(base: str) -> bool:
    return httpx.get(f"{base}/healthz", timeout=5).status_code == 200


def _api_section(port: int, max_records: int | None = None) -> str:
    lines = ["[api]", 'host = "127.0.0.1"', f"port = {port}", "keepalive_s = 1.0"]
    if max_records is not None:
        lines.append(f"max_records = {max_records}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("api-features")
    port = free_port()
    with (
        tempfile.TemporaryDirectory(prefix="bs-", dir="/tmp") as ipc,
        pipeline(
            tmp,
            Path(ipc),
            symbols=[SYMBOL],
            sides=[SIDE],
            start_date=dt.date(2026, 1, 5),
            end_date=dt.date(2026, 1, 6),
            timeframes=["5m", "1h"],
            features=core_features(),
            extra=_api_section(port),
        ) as p,
    ):
        cfg = p.write_config()
        text = cfg.read_text().replace(
            "[gateway]\n", f"[gateway]\nmax_request_records = {GATEWAY_PAGE}\n", 1
        )
        cfg.write_text(text)
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        p.drain_all()
        p.start("gateway")
        servers: list[subprocess.Popen[bytes]] = []
        try:
            base = f"http://127.0.0.1:{port}"
            servers.append(_serve(cfg, tmp / "api.log"))
            with GatewayClient(f"ipc://{ipc}/gw-pub", f"ipc://{ipc}/gw-req", timeout_s=2.0) as gw:
                wait_for(
                    lambda: len(gw.history(SYMBOL, "1h", last=3, features="core")) == 3,
                    60,
                    what="the gateway to answer",
                    ignore=(TimeoutError,),
                )
                small_max = len(gw.history(SYMBOL, "1h", features="core"))
            # A second server whose api.max_records is the 1h series' bar count (fewer
            # than its records): bars are bounded, not records.
            small_port = free_port()
            small_cfg = tmp / "small.toml"
            small_cfg.write_text(
                text.replace(_api_section(port), _api_section(small_port, small_max))
            )
            small = f"http://127.0.0.1:{small_port}"
            servers.append(_serve(small_cfg, tmp / "small.log"))
            for b in (base, small):
                wait_for(
                    functools.partial(_answers, b),
                    60,
                    what=f"{b}/healthz",
                    ignore=(httpx.HTTPError,),
                )
            with httpx.Client(timeout=60) as http:
                yield Run(p, base, small, small_max, http)
        finally:
            for s in servers:
                s.terminate()
            for s in servers:
                try:
                    s.wait(15)
                except subprocess.TimeoutExpired:
                    s.kill()
                    s.wait()


# -- decoding ------------------------------------------------------------------------------


def _from_bars(bars: list[dict[str, Any]], outputs: list[str]) -> Columns:
    for b in bars:
        assert list(b) == BAR_KEYS + outputs, list(b)
    out: Columns = {"ts_ms": np.array([b["ts_ms"] for b in bars], dtype=np.int64)}
    for k in PRICES:
        out[k] = np.array([b[k] for b in bars], dtype=np.float64)
    out["flags"] = np.array([b["flags"] for b in bars], dtype=np.uint16)
    out["provisional"] = np.array([b["provisional"] for b in bars], dtype=bool)
    out["time"] = np.array([b["time"] for b in bars], dtype=object)
    for c in outputs:
        values = [b[c] for b in bars]
        assert all(v is None or isinstance(v, float | int) for v in values), c
        out[c] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return out


def decode(fmt: str, body: bytes, outputs: list[str], topic: str) -> Columns:
    """A ``/v1/bars?features=`` body as columns (the outputs' NaN as NaN)."""
    if fmt == "json":
        doc = msgspec.json.decode(body)
        assert doc["topic"] == topic and doc["count"] == len(doc["bars"]), doc.get("topic")
        return _from_bars(doc["bars"], outputs)
    if fmt == "ndjson":
        lines = body.decode().splitlines()
        assert all(lines), "ndjson: an empty line"
        return _from_bars([msgspec.json.decode(line) for line in lines], outputs)
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(body.decode())))
        assert rows[0] == ["time", *PRICES, "provisional", *outputs], rows[0]
        rows = rows[1:]
        out: Columns = {
            "ts_ms": np.array(
                [int(dt.datetime.fromisoformat(r[0]).timestamp() * 1000) for r in rows],
                dtype=np.int64,
            ),
            "time": np.array([r[0] for r in rows], dtype=object),
        }
        for i, k in enumerate(PRICES, start=1):
            out[k] = np.array([float(r[i]) for r in rows], dtype=np.float64)
        assert all(r[6] in ("0", "1") for r in rows)
        out["provisional"] = np.array([r[6] == "1" for r in rows], dtype=bool)
        for i, c in enumerate(outputs, start=7):
            texts = [r[i] for r in rows]
            assert all(t != "" for t in texts), f"csv {c}: an empty field (NaN is 'nan')"
            out[c] = np.array([float(t) for t in texts], dtype=np.float64)
        return out
    import pyarrow as pa
    import pyarrow.ipc
    import pyarrow.parquet as pq

    if fmt == "arrow":
        table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    else:
        table = pq.read_table(pa.BufferReader(body))
    expect = {
        "ts_ms": pa.int64(),
        "time": pa.timestamp("ms", tz="UTC"),
        **dict.fromkeys(PRICES, pa.float64()),
        "flags": pa.uint16(),
        **dict.fromkeys(outputs, pa.float64()),
    }
    assert [(f.name, f.type) for f in table.schema] == list(expect.items()), table.schema
    for c in outputs:
        assert table[c].null_count == 0, f"{fmt} {c}: nulls (NaN must stay NaN)"
    cols: Columns = {k: table[k].to_numpy() for k in ("ts_ms", *PRICES, "flags", *outputs)}
    assert np.array_equal(table["time"].cast(pa.int64()).to_numpy(), cols["ts_ms"])
    cols["provisional"] = (cols["flags"] & 1) != 0
    return cols


def outputs_of(rows: np.ndarray) -> list[str]:
    return list((rows.dtype.names or ())[7:])


def assert_same(got: Columns, want: np.ndarray, what: str) -> None:
    """``got`` holds exactly the joined rows ``want``: bars bit for bit (h.assert_same), every
    output's values bit for bit and its NaN positions."""
    h.assert_same(got, h.columns_of(want), what)
    for c in outputs_of(want):
        g, w = np.asarray(got[c], dtype=np.float64), np.asarray(want[c], dtype=np.float64)
        assert len(g) == len(w), f"{what}: {c} has {len(g)} values, gateway {len(w)}"
        nan = np.isnan(w)
        assert np.array_equal(np.isnan(g), nan), f"{what}: {c} NaN positions"
        assert np.array_equal(g[~nan].view(np.int64), w[~nan].view(np.int64)), f"{what}: {c}"


# -- formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("tf", ["1m", "1h"])
def test_every_format_decodes_to_the_clients_joined_history(run: Run, tf: str, fmt: str) -> None:
    want = run.history(tf)
    outputs = outputs_of(want)
    assert "rsi_14.value" in outputs and "sma_20" in outputs
    nan = np.isnan(want["sma_20"])
    assert nan[:19].all() and not nan[19:].any(), "the set should be warming up, then valid"
    t0 = time.perf_counter()
    r = run.http.get(run.url(tf), params={"features": "core", "format": fmt})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    topic = f"{SYMBOL}/{SIDE}/{tf}.core"
    assert r.headers["x-barstream-topic"] == topic
    assert r.headers["content-type"].startswith(h_media(fmt))
    got = decode(fmt, r.content, outputs, topic)
    assert_same(got, want, f"{tf} {fmt}")
    assert elapsed < 30, elapsed


def h_media(fmt: str) -> str:
    return {
        "json": "application/json",
        "ndjson": "application/x-ndjson",
        "csv": "text/csv",
        "arrow": "application/vnd.apache.arrow.stream",
        "parquet": "application/vnd.apache.parquet",
    }[fmt]


def test_one_minute_feature_history_is_several_gateway_pages(run: Run) -> None:
    with run.gateway() as gw:
        (info,) = [t for t in gw.list_topics() if t.topic == f"{SYMBOL}/{SIDE}/1m.core"]
    assert info.features is not None
    stride = 1 + info.features.groups
    assert info.count > 2 * GATEWAY_PAGE, info.count  # several pages of records
    r = run.http.get(run.url("1m"), params={"features": "core", "format": "arrow"})
    assert r.status_code == 200
    import pyarrow as pa
    import pyarrow.ipc

    batches = list(pa.ipc.open_stream(pa.py_buffer(r.content)))
    assert len(batches) >= 3, len(batches)  # one record batch per gateway page
    assert sum(b.num_rows for b in batches) == info.count // stride


# -- ranges, limits, bound (in bars) -------------------------------------------------------


@pytest.mark.parametrize("tf", ["1m", "1h"])
def test_limit_start_end_and_provisional_count_bars(run: Run, tf: str) -> None:
    full = run.history(tf)
    outputs = outputs_of(full)
    topic = f"{SYMBOL}/{SIDE}/{tf}.core"

    def get(**params: Any) -> Columns:
        r = run.http.get(run.url(tf), params={"features": "core", "format": "json", **params})
        assert r.status_code == 200, r.text
        return decode("json", r.content, outputs, topic)

    # the last N bars (N more than one gateway page of records for 1m: the widening path)
    for n in (1, 7, 25) + ((2000,) if tf == "1m" else ()):
        assert_same(get(limit=n), full[-n:], f"{tf} limit={n}")
    assert_same(get(limit=0), full[:0], f"{tf} limit=0")
    lo, hi = int(full["ts_ms"][5]), int(full["ts_ms"][30])
    assert_same(get(start=lo, end=hi), full[5:30], f"{tf} start/end")
    assert_same(get(start=lo, limit=10), full[5:15], f"{tf} start+limit")
    assert_same(get(end=hi, limit=10), full[20:30], f"{tf} end+limit")
    with run.gateway() as gw:
        ranged = gw.history(SYMBOL, tf, start=lo, end=hi, side=SIDE, features="core")
    assert_same(get(start=lo, end=hi), ranged, f"{tf} start/end vs client")
    closed = full[(full["flags"] & 1) == 0]
    assert_same(get(provisional="false", limit=5), closed[-5:], f"{tf} closed last 5")
    assert_same(get(provisional="false"), closed, f"{tf} closed")


def test_max_records_bounds_bars_not_records(run: Run) -> None:
    n = run.small_max
    r = run.http.get(run.url("1h", run.small), params={"features": "core", "format": "csv"})
    assert r.status_code == 200, r.text  # n bars = n * (1 + groups) records: still allowed
    assert len(r.text.splitlines()) == n + 1
    r = run.http.get(run.url("1m", run.small), params={"features": "core"})
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "over-limit" and body["limit"] == n, body
    assert f"{SYMBOL}/{SIDE}/1m.core" in body["message"] and "bars" in body["message"]
    r = run.http.get(run.url("1m", run.small), params={"features": "core", "limit": n})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == n


# -- errors --------------------------------------------------------------------------------


def test_mt4_with_features_is_refused_400(run: Run) -> None:
    r = run.http.get(run.url("1h"), params={"features": "core", "format": "mt4"})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "mt4-no-features", body
    assert "features" in body["message"] and "mt4" in body["message"], body
    # without features the same request is served
    assert run.http.get(run.url("1h"), params={"format": "mt4"}).status_code == 200


@pytest.mark.parametrize("kind", ["bars", "stream"])
def test_unknown_set_is_404_naming_the_served_sets(run: Run, kind: str) -> None:
    r = run.http.get(run.url("1m", kind=kind), params={"features": "nosuch"})
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["error"] == "unknown-topic", body
    assert f"{SYMBOL}/{SIDE}/1m.nosuch" in body["message"], body
    assert "serves for EUR-USD/BID/1m: core" in body["message"], body
    r = run.http.get(run.url("5m", kind=kind), params={"features": "other"})
    assert r.status_code == 404, r.text
    assert "5m.other" in r.json()["message"] and "5m: core" in r.json()["message"]


@pytest.mark.parametrize("kind", ["bars", "stream"])
@pytest.mark.parametrize("name", ["Core", "1core", "co-re", "core.x", "a" * 65, "core;drop"])
def test_bad_set_name_is_400(run: Run, kind: str, name: str) -> None:
    r = run.http.get(run.url("1m", kind=kind), params={"features": name})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad-features" and "features=" in body["message"], body


def test_empty_features_is_plain_bars(run: Run) -> None:
    r = run.http.get(run.url("1h"), params={"features": "", "format": "json", "limit": 3})
    assert r.status_code == 200
    assert list(r.json()["bars"][0]) == BAR_KEYS
    assert r.headers["x-barstream-topic"] == f"{SYMBOL}/{SIDE}/1h"


# -- live ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tf", ["1m", "1h"])
def test_stream_history_event_is_the_joined_bars(run: Run, tf: str) -> None:
    want = run.history(tf, last=12)
    outputs = outputs_of(want)
    url = run.url(tf, kind="stream")
    with run.http.stream("GET", url, params={"features": "core", "history": 12}) as r:
        assert r.status_code == 200, r.read()
        event = next(ev for ev in h.read_events(r.iter_lines()) if ev is not None)
    d = event.data
    assert event.event == "bars" and d["kind"] == "history", d
    assert d["topic"] == f"{SYMBOL}/{SIDE}/{tf}.core"
    assert d["replaces"] == 0 and len(d["bars"]) == 12
    with run.gateway() as gw:
        (info,) = [t for t in gw.list_topics() if t.topic == d["topic"]]
    assert info.features is not None
    bars = info.count // (1 + info.features.groups)
    assert d["start_offset"] == bars - 12  # in bars
    assert event.end == info.count  # the id: the position in the topic's records
    assert_same(_from_bars(d["bars"], outputs), want, f"{tf} stream history")


def test_topics_list_the_feature_topics(run: Run) -> None:
    r = run.http.get(f"{run.base}/v1/topics")
    assert r.status_code == 200, r.text
    by_topic = {t["topic"]: t for t in r.json()["topics"]}
    with run.gateway() as gw:
        listing = {t.topic: t for t in gw.list_topics()}
    assert set(by_topic) == set(listing)
    assert by_topic[f"{SYMBOL}/{SIDE}/1h"]["features"] is None
    t = by_topic[f"{SYMBOL}/{SIDE}/1h.core"]
    info = listing[f"{SYMBOL}/{SIDE}/1h.core"]
    assert info.features is not None
    assert (t["symbol"], t["side"], t["timeframe"], t["count"]) == (SYMBOL, SIDE, "1h", info.count)
    assert t["features"]["name"] == "core"
    assert t["features"]["outputs"] == info.features.outputs
    assert t["features"]["groups"] == info.features.groups


def test_stream_resumes_from_a_feature_position(run: Run) -> None:
    """Last-Event-ID with features: END is in the feature topic's records. Resuming from
    the history event's id sends nothing (nothing changed: keep-alives only); from the
    position three bars earlier, exactly those three bars again, joined."""
    url = run.url("1h", kind="stream")
    with run.http.stream("GET", url, params={"features": "core", "history": 2}) as r:
        assert r.status_code == 200
        first = next(ev for ev in h.read_events(r.iter_lines()) if ev is not None)
    epoch, seq, end = first.id.split(".")
    with run.gateway() as gw:
        (info,) = [t for t in gw.list_topics() if t.topic == f"{SYMBOL}/{SIDE}/1h.core"]
    assert info.features is not None
    stride = 1 + info.features.groups
    assert int(end) == info.count

    def after(last_event_id: str) -> Any:
        """The first event after resuming, or None when a keep-alive comes first."""
        headers = {"Last-Event-ID": last_event_id}
        params = {"features": "core"}
        with run.http.stream("GET", url, params=params, headers=headers) as r:
            assert r.status_code == 200, r.read()
            return next(iter(h.read_events(r.iter_lines())))

    assert after(first.id) is None
    ev = after(f"{epoch}.{seq}.{int(end) - 3 * stride}")
    assert ev is not None and ev.data["kind"] != "history", ev
    bars = info.count // stride
    assert ev.data["start_offset"] == bars - 3 and ev.data["replaces"] == 0, ev.data
    assert ev.end == info.count
    want = run.history("1h", last=3)
    assert_same(_from_bars(ev.data["bars"], outputs_of(want)), want, "resumed")
