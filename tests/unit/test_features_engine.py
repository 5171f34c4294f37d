"""The features engine: incremental = batch byte for byte (Hypothesis), revisions and rewinds
through ``state_at``, provisional bars, warm-up flags, the 64-byte layout."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barstream.services.features import layout
from barstream.services.features.engine import Features, Stream, compute, state_at
from barstream.services.features.spec import KINDS, FeatureSet, feature_set
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE

DAY_MS = 86_400_000
# the first test of a fresh checkout compiles the kernels (numba, ~20 s; cached afterwards)
pytestmark = pytest.mark.timeout(300)


def bars_of(points: list[tuple[int, int, int, int]], gaps: list[int], scale: float = 1e-3) -> np.ndarray:  # fmt: skip
    """Bars from (close step, high extra, low extra, volume) and minute gaps."""
    b = np.zeros(len(points), RECORD_DTYPE)
    c = 100_000 + np.cumsum([p[0] for p in points])
    o = np.r_[c[:1], c[:-1]]
    b["ts_ms"] = 1_700_000_000_000 + np.cumsum(np.asarray(gaps[: len(points)], np.int64)) * 60_000
    b["open"], b["close"] = o * scale, c * scale
    b["high"] = (np.maximum(o, c) + [p[1] for p in points]) * scale
    b["low"] = (np.minimum(o, c) - [p[2] for p in points]) * scale
    b["volume"] = [p[3] for p in points]
    b["src_count"] = 1
    return b


@st.composite
def series(draw: Any, min_size: int = 1, max_size: int = 160) -> np.ndarray:
    n = draw(st.integers(min_size, max_size))
    pts = draw(st.lists(st.tuples(st.integers(-4, 4), st.integers(0, 3), st.integers(0, 3), st.integers(0, 50)), min_size=n, max_size=n))  # fmt: skip
    gaps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 30, 600, 1440]), min_size=n, max_size=n))
    return bars_of(pts, gaps)


@st.composite
def feature_sets(draw: Any) -> FeatureSet:
    small = st.integers(1, 9)
    items: list[dict[str, Any]] = []
    for i, kind in enumerate(draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=8))):  # fmt: skip
        params: dict[str, Any] = {}
        if kind == "macd":
            fast = draw(small)
            params = {"fast": fast, "slow": fast + draw(small), "signal": draw(small)}
        elif kind == "stoch":
            params = {"k": draw(small), "d": draw(small)}
        elif kind in ("volatility", "zscore"):
            params = {"period": draw(st.integers(2, 9)), "ddof": draw(st.sampled_from([0, 1]))}
        elif kind in ("bbands", "cci"):
            params = {"period": draw(st.integers(2, 9))}
        elif kind == "vwap":
            params = {"anchor": "utc_day"}
        elif kind != "obv":
            params = {"period": draw(small)}
        items.append({"kind": kind, "params": params, "name": f"i{i}"})
    return feature_set("t", ["1m"], items)


def same(a: Features, b: Features) -> bool:
    return a.values.tobytes() == b.values.tobytes() and a.ok.tobytes() == b.ok.tobytes()


def cat(parts: list[Features]) -> Features:
    f = parts[0]
    return Features(f.columns, np.concatenate([p.ts_ms for p in parts]), np.concatenate([p.flags for p in parts]),
                    np.concatenate([p.values for p in parts], axis=1), np.concatenate([p.ok for p in parts], axis=1))  # fmt: skip


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(fs=feature_sets(), bars=series(), chunks=st.lists(st.integers(1, 40), min_size=1, max_size=30), data=st.data())  # fmt: skip
def test_incremental_equals_batch_byte_for_byte(fs: FeatureSet, bars: np.ndarray, chunks: list[int], data: Any) -> None:  # fmt: skip
    batch = compute(fs, bars)
    s = Stream(fs)
    parts, at, k = [], 0, 0
    while at < len(bars):
        m = 1 if k % 2 else chunks[k % len(chunks)]  # single bars and batches alternate
        k += 1
        nxt = bars[at : at + m]
        # a provisional version of the next bar first: its features equal a batch that ends there
        prov = nxt[:1].copy()
        prov["close"] = data.draw(
            st.sampled_from([prov["close"][0], prov["high"][0], prov["low"][0]])
        )
        prov["flags"] = FLAG_PROVISIONAL
        peeked = s.peek(prov[0])
        whole = compute(fs, np.concatenate([bars[:at], prov]))
        assert peeked.values.tobytes() == whole.values[:, at:].tobytes()
        assert peeked.ok.tobytes() == whole.ok[:, at:].tobytes()
        parts.append(s.apply(nxt))
        at += len(nxt)
    inc = cat(parts)
    assert same(inc, batch)
    assert layout.pack(fs, inc).tobytes() == layout.pack(fs, batch).tobytes()


@SETTINGS
@given(fs=feature_sets(), bars=series(min_size=30), new=series(max_size=60), data=st.data())
def test_revision_resumes_from_the_stored_row(fs: FeatureSet, bars: np.ndarray, new: np.ndarray, data: Any) -> None:  # fmt: skip
    x = data.draw(st.integers(1, len(bars) - 1))
    stored = layout.pack(fs, compute(fs, bars))  # the feature store before the revision
    tail = new.copy()
    tail["ts_ms"] = bars["ts_ms"][x - 1] + 60_000 * (1 + np.arange(len(new)))
    revised = np.concatenate([bars[:x], tail])  # bars from x replaced (and maybe more or fewer)
    row = layout.row(fs, stored, x - 1)
    s = state_at(fs, revised, row, x)
    want = compute(fs, revised)
    got = s.apply(revised[x:])
    assert got.values.tobytes() == want.values[:, x:].tobytes()
    assert got.ok.tobytes() == want.ok[:, x:].tobytes()
    assert layout.pack(fs, got).tobytes() == layout.pack(fs, want).tobytes()[x * fs.n_groups * 64 :]


@SETTINGS
@given(fs=feature_sets(), bars=series(), data=st.data())
def test_state_recovered_at_x_equals_the_state_reached_by_running(fs: FeatureSet, bars: np.ndarray, data: Any) -> None:  # fmt: skip
    x = data.draw(st.integers(0, len(bars)))
    batch = compute(fs, bars)
    running = Stream(fs)
    running.apply(bars[:x])
    row = batch.values[:, x - 1] if x else None
    rec = state_at(fs, bars, row, x)
    assert rec.offset == running.offset == x
    assert rec.state.tobytes() == running.state.tobytes()
    assert rec.tail().tobytes() == running.tail().tobytes()
    if x < len(bars):  # and both go on alike
        assert same(rec.apply(bars[x:]), running.apply(bars[x:]))


def test_state_at_reads_only_the_tail_past_the_horizon() -> None:
    fs = feature_set("t", ["1m"], [{"kind": k} for k in sorted(KINDS)])  # every state map
    rng = np.random.default_rng(3)
    pts = [(int(a), 1, 1, 5) for a in rng.integers(-3, 4, 500)]
    bars = bars_of(pts, [1] * 500)
    batch = compute(fs, bars)
    x = 400
    poisoned = bars.copy()
    poisoned["close"][: x - fs.lookback] = np.nan  # bars before the tail are not read
    s = state_at(fs, poisoned, batch.values[:, x - 1], x)
    running = Stream(fs)
    running.apply(bars[:x])
    assert s.state.tobytes() == running.state.tobytes()
    assert same(s.apply(bars[x:]), _slice(batch, x))
    with pytest.raises(ValueError, match="needs the stored row"):
        state_at(fs, bars, None, x)


def _slice(f: Features, x: int) -> Features:
    return Features(f.columns, f.ts_ms[x:], f.flags[x:], f.values[:, x:], f.ok[:, x:])


# warm-up: per column, the first valid index on a series where nothing is degenerate
FIRST_VALID = {
    "returns": {"simple": "p", "log": "p"},
    "sma": {"": "n-1"}, "ema": {"": "n-1"}, "wma": {"": "n-1"},
    "rsi": {"value": "n", "avg_gain": "n", "avg_loss": "n"},
    "macd": {"line": "slow-1", "signal": "slow+signal-2", "hist": "slow+signal-2", "ema_fast": "fast-1", "ema_slow": "slow-1"},
    "bbands": {"mid": "n-1", "upper": "n-1", "lower": "n-1", "pctb": "n-1"},
    "atr": {"": "n"}, "stoch": {"k": "k-1", "d": "k+d-2"}, "willr": {"": "n-1"}, "cci": {"": "n-1"},
    "roc": {"roc": "n", "momentum": "n"}, "volatility": {"": "n"}, "zscore": {"": "n"},
    "donchian": {"upper": "n-1", "lower": "n-1", "mid": "n-1"}, "obv": {"": "0"},
    "vwap": {"value": "0", "cum_pv": "0", "cum_v": "0"},
    "adx": {"adx": "2n-1", "plus_di": "n", "minus_di": "n", "tr_sum": "n", "plus_dm_sum": "n", "minus_dm_sum": "n"},
}  # fmt: skip


def _expected(rule: str, p: dict[str, Any]) -> int:
    env = {"p": p.get("period"), "n": p.get("period"), "slow": p.get("slow"), "fast": p.get("fast"),
           "signal": p.get("signal"), "k": p.get("k"), "d": p.get("d")}  # fmt: skip
    expr = rule.replace("2n", "2*n")
    return int(eval(expr, {}, env))


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("size", ["small", "default"])
def test_warm_up_flags(kind: str, size: str) -> None:
    params: dict[str, Any] = {}
    if size == "small":
        params = {"macd": {"fast": 2, "slow": 5, "signal": 3}, "stoch": {"k": 4, "d": 2}, "obv": {}, "vwap": {}}.get(kind, {"period": 3})  # fmt: skip
    fs = feature_set("t", ["1m"], [{"kind": kind, "params": params}])
    rng = np.random.default_rng(11)
    steps = rng.choice([-3, -2, -1, 1, 2, 3], 120)  # never flat, h > l, volume > 0
    bars = bars_of([(int(s), 1, 1, 10) for s in steps], [1] * 120)
    f = compute(fs, bars)
    ind = fs.indicators[0]
    rules = FIRST_VALID[kind]
    assert len(rules) == len(ind.columns)
    for col, (out, rule) in zip(ind.columns, rules.items(), strict=True):
        assert col.endswith(out)
        first = _expected(rule, ind.params)
        ok = f.valid[f.columns.index(col)]
        assert not ok[:first].any(), (col, "valid before its warm-up")
        assert ok[first:].all(), (col, "not valid after its warm-up")
        assert np.isnan(f.column(col)[:first]).all()  # flagged and NaN, never a silent 0
    assert fs.horizon == ind.spec.horizon(ind.params)


def test_flat_windows_are_flagged_not_zero() -> None:
    fs = feature_set(
        "t", ["1m"], [{"kind": k} for k in ("stoch", "willr", "bbands", "cci", "rsi", "zscore")]
    )
    bars = bars_of([(0, 0, 0, 0)] * 60, [1] * 60)  # nothing moves
    f = compute(fs, bars)
    for col in ("stoch_14_3.k", "stoch_14_3.d", "willr_14", "bbands_20_2p0.pctb", "cci_20_0p015", "rsi_14.value", "zscore_20_1"):  # fmt: skip
        assert not f.valid[f.columns.index(col)].any(), col
    assert f.valid[f.columns.index("bbands_20_2p0.mid")][19:].all()


def test_layout_round_trip_and_refusals() -> None:
    fs = feature_set("t", ["1m"], [{"kind": k} for k in sorted(KINDS)])
    bars = bars_of([(1, 1, 1, 3), (-2, 0, 1, 4)] * 40, [1] * 80)
    f = compute(fs, bars)
    rec = layout.pack(fs, f)
    assert rec.dtype.itemsize == 64 and len(rec) == 80 * fs.n_groups
    assert rec["group"][: fs.n_groups].tolist() == list(range(fs.n_groups))
    back = layout.unpack(fs, rec)
    assert same(back, f) and np.array_equal(back.ts_ms, f.ts_ms)
    assert int(rec["valid"][0]) == 0  # bar 0: returns not valid yet (bits of v0, v1)
    other = feature_set("t", ["1m"], [{"kind": "sma"}])
    with pytest.raises(layout.FeatureLayoutError, match=r"not whole bars|was not written"):
        layout.unpack(other, rec[:1])
    with pytest.raises(layout.FeatureLayoutError, match=r"bar 3 .*rebuild"):
        bad = rec.copy()
        bad["set_crc"][3 * fs.n_groups] ^= 1
        layout.unpack(fs, bad)


def test_session_vwap_restarts_at_each_session_occurrence() -> None:
    import datetime as dt

    from barstream.shared.sessions import Session

    # New York 18:00 → 17:00 next day (wraps midnight, DST-aware): the FX day
    fx = [Session("fx", "America/New_York", dt.time(18), dt.time(17), frozenset(range(7)))]
    fs = feature_set("t", ["1h"], [{"kind": "vwap", "params": {"anchor": "session"}}, {"kind": "vwap"}])  # fmt: skip
    rng = np.random.default_rng(5)
    n = 3 * 24
    bars = bars_of([(int(a), 1, 1, int(v)) for a, v in zip(rng.integers(-3, 4, n), rng.integers(1, 9, n), strict=True)], [60] * n)  # fmt: skip
    bars["ts_ms"] = int(dt.datetime(2026, 3, 6, tzinfo=dt.UTC).timestamp() * 1000) + np.arange(n) * 3_600_000  # fmt: skip
    ny = [dt.datetime.fromtimestamp(t / 1000, dt.UTC).astimezone(ZoneInfo("America/New_York")) for t in bars["ts_ms"]]  # fmt: skip
    keep = np.array([t.hour != 17 for t in ny])  # 17:00–18:00 New York is outside the session
    bars = bars[keep]
    ny = [t for t, k in zip(ny, keep, strict=True) if k]
    f = compute(fs, bars, sessions=fx)
    # reference: the occurrence is the New York date of (time - 18 h)
    occ = [(t - dt.timedelta(hours=18)).date() for t in ny]
    want, pv, vol = [], 0.0, 0.0
    for i, b in enumerate(bars):
        if i == 0 or occ[i] != occ[i - 1]:
            pv = vol = 0.0
        pv += (b["high"] + b["low"] + b["close"]) / 3 * b["volume"]
        vol += b["volume"]
        want.append(pv / vol)
    got = f.column("vwap_session.value")
    assert np.allclose(got, want, rtol=1e-12, atol=0)
    assert not np.array_equal(got, f.column("vwap_utc_day.value"))  # not the UTC day
    # incremental with sessions equals batch
    s = Stream(fs, sessions=fx)
    inc = cat([s.apply(bars[i : i + 1]) for i in range(len(bars))])
    assert same(inc, f)


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_blocks_equal_the_whole_batch_and_pack_into_a_reused_buffer(block: int) -> None:
    from barstream.services.features.engine import compute_blocks

    fs = feature_set("t", ["1m"], [{"kind": k} for k in sorted(KINDS)])
    rng = np.random.default_rng(9)
    bars = bars_of([(int(a), 1, 2, 7) for a in rng.integers(-3, 4, 300)], [1] * 300)
    whole = compute(fs, bars)
    want = layout.pack(fs, whole).tobytes()
    buf = np.zeros(block * fs.n_groups, layout.FEATURE_DTYPE)
    got = []
    for lo, f in compute_blocks(fs, bars, block=block):
        assert f.ts_ms[0] == bars["ts_ms"][lo]
        got.append(layout.pack(fs, f, out=buf).tobytes())
    assert b"".join(got) == want
    with pytest.raises(layout.FeatureLayoutError, match="needs"):
        layout.pack(fs, whole, out=buf[:1])
