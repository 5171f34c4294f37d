"""decode_candles: exact decoding, flags, and rejection of every kind of bad payload;
decode_days: the same, many days at once."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from barstream.fake.bars import DayBars
from barstream.fake.encoding import encode_candles
from barstream.services.transformer import bulk
from barstream.services.transformer.bulk import CHUNK_DAYS, decode_days
from barstream.services.transformer.rules import multiplier_decimals
from barstream.services.transformer.transform import decode_candles
from barstream.shared.errors import PayloadInvalid
from barstream.shared.record import FLAG_DAY_END, FLAG_LIVE, FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import DAY_MS
from tests.support import bi5

DAY = dt.date(2024, 1, 2)
DAY_MS0 = 1704153600000  # 2024-01-02 00:00 UTC


def good() -> dict[str, object]:
    """A valid three-bar day (prices in points: see each row's comment)."""
    return {
        "timestamp": DAY_MS0,
        "multiplier": 1e-5,
        "open": 1.1,
        "high": 1.1001,
        "low": 1.0999,
        "close": 1.10005,
        "shift": 60000,
        "times": [0, 1, 1],
        "opens": [0, 5, -3],  # 110000 110005 110002
        "highs": [0, 5, 0],  # 110010 110015 110015
        "lows": [0, 5, 0],  # 109990 109995 109995
        "closes": [0, -2, 1],  # 110005 110003 110004
        "volumes": [10.5, 3.25, 7.0],
    }


def dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(body: bytes, *, live: bool = False, day_ms: int = DAY_MS0) -> np.ndarray:
    return decode_candles(
        body, symbol="EUR-USD", side="BID", day_ms=day_ms, live=live, src_offset=42
    )


# --- the good path ---------------------------------------------------------------------------


def test_decodes_times_prices_volumes_exactly() -> None:
    out = decode(dump(good()))
    assert out.dtype == RECORD_DTYPE
    assert out["ts_ms"].tolist() == [DAY_MS0, DAY_MS0 + 60000, DAY_MS0 + 120000]
    # exact decimal floats: the nearest double to each decimal, not points * 1e-5
    assert out["open"].tolist() == [1.1, 1.10005, 1.10002]
    assert out["high"].tolist() == [1.1001, 1.10015, 1.10015]
    assert out["low"].tolist() == [1.0999, 1.09995, 1.09995]
    assert out["close"].tolist() == [1.10005, 1.10003, 1.10004]
    assert out["volume"].tolist() == [10.5, 3.25, 7.0]
    assert out["src_offset"].tolist() == [42, 42, 42]
    assert out["src_count"].tolist() == [1, 1, 1]
    assert out["session"].tolist() == [0, 0, 0] and out["reserved"].tolist() == [0, 0, 0]


def test_final_day_marks_only_the_last_record_day_end() -> None:
    flags = decode(dump(good()))["flags"].tolist()
    assert flags == [0, 0, FLAG_DAY_END]


def test_live_day_is_live_with_provisional_last_minute() -> None:
    flags = decode(dump(good()), live=True)["flags"].tolist()
    assert flags == [FLAG_LIVE, FLAG_LIVE, FLAG_LIVE | FLAG_PROVISIONAL]


def test_empty_day_gives_no_records_live_or_not() -> None:
    d = good()
    d.update(open=None, high=None, low=None, close=None, times=[], opens=[], highs=[], lows=[])
    d.update(closes=[], volumes=[])
    for live in (False, True):
        out = decode(dump(d), live=live)
        assert len(out) == 0 and out.dtype == RECORD_DTYPE


def test_first_bar_after_midnight_and_gaps() -> None:
    d = good()
    d["times"] = [1260, 1, 5]  # Sunday-like open at 21:00 with a gap of 5 minutes
    out = decode(dump(d))
    assert ((out["ts_ms"] - DAY_MS0) // 60000).tolist() == [1260, 1261, 1266]


def test_pretty_printed_json_takes_the_strict_path_with_the_same_result() -> None:
    compact = decode(dump(good()))
    pretty = decode(json.dumps(good(), indent=2).encode())
    assert compact.tobytes() == pretty.tobytes()


def test_unknown_keys_are_ignored() -> None:
    d = good()
    d["extra"] = {"x": [1, 2]}
    assert len(decode(dump(d))) == 3


def test_jpy_multiplier() -> None:
    d = good()
    d.update(multiplier=0.001, open=110.0, high=110.01, low=109.99, close=110.005)
    d["opens"], d["highs"], d["lows"], d["closes"] = [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]
    d["close"] = 110.005
    out = decode(dump(d))
    assert out["high"].tolist() == [110.01] * 3 and out["close"].tolist() == [110.005] * 3


def test_output_is_byte_identical_across_calls() -> None:
    body = dump(good())
    assert decode(body).tobytes() == decode(body).tobytes()


@pytest.mark.parametrize(
    ("value", "decimals"),
    [
        (1e-5, 5),
        (1.0e-3, 3),
        (1.0, 0),
        (1e-8, 8),
        (0.1, 1),
        (1e-9, None),
        (10.0, None),
        (0.5, None),
    ],
)
def test_multiplier_decimals(value: float, decimals: int | None) -> None:
    assert multiplier_decimals(value) == decimals


@settings(max_examples=80, deadline=None)
@given(
    decimals=st.sampled_from([0, 1, 3, 5, 8]),
    n=st.integers(1, 1440),
    seed=st.integers(0, 2**32 - 1),
    max_points=st.sampled_from([2, 1000, 10**7, 2**40]),
)
@example(decimals=0, n=1, seed=719163, max_points=2**40)  # a high at the limit
def test_encode_decode_round_trip(decimals: int, n: int, seed: int, max_points: int) -> None:
    """Any valid day the fake encodes decodes back to exactly its integer points."""
    rng = np.random.default_rng(seed)
    minutes = np.sort(rng.choice(1440, size=n, replace=False)).astype(np.int64)
    width = rng.integers(0, max(1, max_points // 1000), size=n, endpoint=True)
    lows = rng.integers(1, max_points, size=n, endpoint=True)
    lows = np.maximum(1, np.minimum(lows, max_points - width))  # highs stay within max_points
    highs = lows + width
    opens = lows + rng.integers(0, width, endpoint=True)
    closes = lows + rng.integers(0, width, endpoint=True)
    vols = np.round(rng.lognormal(3, 3, size=n), int(rng.integers(0, 6)))
    vols[rng.random(n) < 0.1] = 0.0
    ts = DAY_MS0 + minutes * 60000
    bars = DayBars(decimals, ts, opens, highs, lows, closes, vols)
    out = decode(encode_candles(bars, empty_timestamp_ms=DAY_MS0))
    scale = 10**decimals
    assert out["ts_ms"].tolist() == ts.tolist()
    for key, points in (("open", opens), ("high", highs), ("low", lows), ("close", closes)):
        assert np.round(out[key] * scale).astype(np.int64).tolist() == points.tolist()
        assert out[key].tolist() == (points / scale).tolist()
    assert out["volume"].tolist() == vols.tolist()


# --- the bad-input corpus: every kind is rejected, naming field and index ------------------------


def mutate(**changes: object) -> bytes:
    d = good()
    d.update(changes)
    return dump(d)


def without(key: str) -> bytes:
    d = good()
    del d[key]
    return dump(d)


GOOD = dump(good())
BAD: list[tuple[str, bytes, str, int | None]] = [
    ("empty_body", b"", "body", None),
    ("whitespace_body", b"  \n", "body", 3),
    (
        "truncated_json",
        GOOD[: GOOD.index(b'"closes":[0,-2,') + len(b'"closes":[0,-2,')],
        "closes",
        2,
    ),
    ("truncated_in_header", GOOD[: GOOD.index(b'"multiplier":') + 15], "multiplier", None),
    ("html_error_page", b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>", "body", 0),
    ("not_an_object", b"[1,2,3]", "body", None),
    ("json_null", b"null", "body", None),
    ("missing_key", without("volumes"), "volumes", None),
    ("missing_timestamp", without("timestamp"), "timestamp", None),
    ("array_is_a_string", mutate(times="0,1,1"), "times", None),
    ("float_delta", mutate(opens=[0, 1.5, 0]), "opens", 1),
    ("bool_in_times", mutate(times=[0, True, 1]), "times", 1),
    ("price_is_a_string", mutate(open="1.1"), "open", None),
    ("null_price_on_non_empty_day", mutate(close=None), "close", None),
    ("nan_literal", GOOD.replace(b'"high":1.1001', b'"high":NaN'), "high", None),
    ("infinity_volume", GOOD.replace(b"[10.5,3.25,7.0]", b"[10.5,Infinity,7.0]"), "volumes", 1),
    ("overflow_volume", GOOD.replace(b"[10.5,3.25,7.0]", b"[10.5,3.25,1e999]"), "volumes", 2),
    ("negative_price", mutate(opens=[0, 5, -300000]), "opens", 2),
    ("zero_price", mutate(lows=[0, -109990, 0]), "lows", 1),
    ("negative_first_price", mutate(open=-1.1), "opens", 0),
    ("high_below_low", mutate(highs=[0, -30, 0]), "highs", 1),
    ("open_above_high", mutate(opens=[0, 5, 20]), "opens", 2),
    ("open_below_low", mutate(opens=[0, -20, 0]), "opens", 1),
    ("close_below_low", mutate(closes=[0, -20, 0]), "closes", 1),
    ("close_above_high", mutate(closes=[0, 0, 30]), "closes", 2),
    ("non_monotonic_times", mutate(times=[0, 2, -1]), "times", 2),
    ("duplicated_times", mutate(times=[0, 1, 0]), "times", 2),
    ("unequal_lengths_short", mutate(volumes=[1.0, 2.0]), "volumes", 2),
    ("unequal_lengths_long", mutate(highs=[0, 5, 0, 1]), "highs", 3),
    ("time_before_day", mutate(timestamp=DAY_MS0 - 60000), "times", 0),
    ("time_after_day", mutate(times=[0, 1, 1440]), "times", 2),
    ("time_step_overflow", mutate(times=[0, 1, 2**40]), "times", 2),
    ("timestamp_not_a_minute", mutate(timestamp=DAY_MS0 + 1), "timestamp", None),
    ("multiplier_not_power_of_ten", mutate(multiplier=0.5), "multiplier", None),
    ("multiplier_too_small", mutate(multiplier=1e-9), "multiplier", None),
    ("multiplier_zero", mutate(multiplier=0), "multiplier", None),
    ("multiplier_above_one", mutate(multiplier=10.0), "multiplier", None),
    ("hourly_shift", mutate(shift=3600000), "shift", None),
    ("zero_shift", mutate(shift=0), "shift", None),
    ("negative_volume", mutate(volumes=[1.0, -0.5, 2.0]), "volumes", 1),
    ("first_price_off_grid", mutate(open=1.100004), "open", None),
    ("absurd_delta", mutate(closes=[0, 2**45, 0]), "closes", 1),
]


@pytest.mark.parametrize(("body", "field", "index"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_payload_is_rejected(body: bytes, field: str, index: int | None) -> None:
    result = None
    with pytest.raises(PayloadInvalid) as info:
        result = decode(body)
    assert result is None  # nothing is returned
    err = info.value
    assert (err.field, err.index) == (field, index), str(err)
    assert (err.symbol, err.side, err.day) == ("EUR-USD", "BID", DAY.isoformat())
    text = str(err)
    assert text.startswith(f"EUR-USD/BID/{DAY.isoformat()}: {field}")
    if index is not None:
        assert f"{field}[{index}]" in text


def test_corpus_has_at_least_twenty_kinds() -> None:
    assert len({name for name, *_ in BAD}) >= 20


def test_every_corpus_entry_differs_from_the_good_payload() -> None:
    assert len(decode(GOOD)) == 3  # the base itself is valid, so each failure is the mutation's


# --- real Dukascopy responses ----------------------------------------------------------------


def _day_ms(day: dt.date) -> int:
    return (day - dt.date(1970, 1, 1)).days * DAY_MS


@pytest.mark.real_data
def test_json_day_equals_dukascopy_bi5_candles(real_data: Path) -> None:
    """The JSON API day decodes to exactly Dukascopy's own 1m candles (integer points)."""
    day = dt.date(2019, 2, 4)
    body = (real_data / "dukascopy-json/bp.markets.ingest/EUR-USD_20190204.json").read_bytes()
    out = decode(body, day_ms=_day_ms(day))
    oracle = bi5.read_candle_points(bi5.day_path(real_data / "dukascopy-bi5", "EURUSD", day))
    assert bi5.day_path(real_data / "dukascopy-bi5", "EURUSD", day).parent.name == "04"
    traded = oracle[oracle["volume"] > 0]
    assert len(out) == len(traded) == 1440
    assert (out["ts_ms"] - _day_ms(day)).tolist() == (
        traded["t_s"].astype(np.int64) * 1000
    ).tolist()
    for key in ("open", "high", "low", "close"):
        points = np.round(out[key] * 1e5).astype(np.int64)
        assert points.tolist() == traded[key].astype(np.int64).tolist(), key
    as_records = bi5.read_candles(
        bi5.day_path(real_data / "dukascopy-bi5", "EURUSD", day),
        period_start=dt.datetime(2019, 2, 4),
    )
    for key in ("open", "high", "low", "close"):
        assert out[key].tolist() == as_records[key][as_records["volume"] > 0].tolist()


def _candle_files(real_data: Path) -> list[Path]:
    files = []
    for path in sorted((real_data / "dukascopy-json").rglob("*.json")):
        obj = json.loads(path.read_bytes())
        if isinstance(obj, dict) and "shift" in obj and "times" in obj:
            files.append(path)
    return files


@pytest.mark.real_data
def test_every_recorded_candle_json_decodes(real_data: Path) -> None:
    files = _candle_files(real_data)
    assert len(files) >= 3, files
    for path in files:
        obj = json.loads(path.read_bytes())
        day_ms = obj["timestamp"] // DAY_MS * DAY_MS
        out = decode(path.read_bytes(), day_ms=day_ms)
        assert len(out) == len(obj["times"]), path
        if len(out):
            assert np.all(np.diff(out["ts_ms"]) > 0)
            assert np.all((out["low"] <= out["open"]) & (out["open"] <= out["high"]))
            assert np.all((out["low"] <= out["close"]) & (out["close"] <= out["high"]))
            assert out["flags"][-1] == FLAG_DAY_END


@pytest.mark.real_data
def test_recorded_friday_matches_manifest(real_data: Path) -> None:
    day = dt.date(2026, 7, 10)
    body = (real_data / "dukascopy-json/candles-minute-EUR-USD-BID-2026-7-10.json").read_bytes()
    out = decode(body, day_ms=_day_ms(day))
    assert len(out) == 1258
    assert (out["ts_ms"][0] - _day_ms(day)) // 60000 == 0
    assert (out["ts_ms"][-1] - _day_ms(day)) // 60000 == 20 * 60 + 59
    assert out["open"][0] == 1.14331 and out["close"][0] == 1.14324


@pytest.mark.real_data
def test_recorded_empty_saturday_gives_no_records(real_data: Path) -> None:
    body = (
        real_data / "dukascopy-json/candles-minute-EUR-USD-BID-2026-7-11-empty.json"
    ).read_bytes()
    for live in (False, True):
        assert len(decode(body, day_ms=_day_ms(dt.date(2026, 7, 11)), live=live)) == 0


@pytest.mark.real_data
def test_recorded_day_rejected_for_the_wrong_day(real_data: Path) -> None:
    body = (real_data / "dukascopy-json/candles-minute-EUR-USD-BID-2026-7-10.json").read_bytes()
    with pytest.raises(PayloadInvalid) as info:
        decode(body, day_ms=_day_ms(dt.date(2026, 7, 9)))
    assert (info.value.field, info.value.day) == ("times", "2026-07-09")


# --- fuzz: bad input never crashes, never yields an invalid record ------------------------------


def _valid_or_rejected(body: bytes) -> None:
    try:
        out = decode(body)
    except PayloadInvalid as err:
        assert err.field and err.day == DAY.isoformat()
        return
    if len(out):
        assert np.all(np.diff(out["ts_ms"]) > 0)
        assert np.all((out["ts_ms"] >= DAY_MS0) & (out["ts_ms"] < DAY_MS0 + DAY_MS))
        assert np.all(out["low"] > 0) and np.all(out["low"] <= out["high"])
        assert np.all((out["low"] <= out["open"]) & (out["open"] <= out["high"]))
        assert np.all((out["low"] <= out["close"]) & (out["close"] <= out["high"]))
        assert np.all(np.isfinite(out["volume"]) & (out["volume"] >= 0))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(body: bytes) -> None:
    _valid_or_rejected(body)


@settings(max_examples=400, deadline=None)
@given(
    pos=st.integers(0, len(GOOD) - 1),
    cut=st.integers(0, 8),
    insert=st.sampled_from(
        [b"", b"-", b"0", b"9", b",", b"]", b"[", b"1e", b".5", b"null", b'"', b" "]
    ),
)
def test_mutated_payloads_never_crash(pos: int, cut: int, insert: bytes) -> None:
    _valid_or_rejected(GOOD[:pos] + insert + GOOD[pos + cut :])


@settings(max_examples=200, deadline=None)
@given(
    key=st.sampled_from(["times", "opens", "highs", "lows", "closes", "volumes"]),
    values=st.lists(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            st.none(),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_arbitrary_array_values_never_crash(key: str, values: list[object]) -> None:
    _valid_or_rejected(mutate(**{key: values}))


# --- decode_days: many days at once, each exactly as decode_candles ------------------------------


def random_day(rng: np.random.Generator, day_ms: int, decimals: int, n: int) -> bytes:
    """A valid compact day of ``n`` bars; the header timestamp may precede the first bar."""
    if n == 0:
        return dump(
            {
                "timestamp": day_ms,
                "multiplier": 10.0**-decimals,
                "open": None,
                "high": None,
                "low": None,
                "close": None,
                "shift": 60000,
                "times": [],
                "opens": [],
                "highs": [],
                "lows": [],
                "closes": [],
                "volumes": [],
            }
        )
    minutes = np.sort(rng.choice(1440, size=n, replace=False)).astype(np.int64)
    base = int(rng.integers(0, minutes[0], endpoint=True))
    lows = rng.integers(1, 10**7, size=n, endpoint=True)
    width = rng.integers(0, 5000, size=n, endpoint=True)
    highs = lows + width
    opens = lows + rng.integers(0, width, endpoint=True)
    closes = lows + rng.integers(0, width, endpoint=True)
    vols = np.round(rng.lognormal(3, 3, size=n), int(rng.integers(0, 6)))
    scale = 10**decimals
    return dump(
        {
            "timestamp": day_ms + base * 60000,
            "multiplier": 10.0**-decimals,
            "open": int(opens[0]) / scale,
            "high": int(highs[0]) / scale,
            "low": int(lows[0]) / scale,
            "close": int(closes[0]) / scale,
            "shift": 60000,
            "times": np.diff(minutes, prepend=base).tolist(),
            "opens": [0, *np.diff(opens).tolist()],
            "highs": [0, *np.diff(highs).tolist()],
            "lows": [0, *np.diff(lows).tolist()],
            "closes": [0, *np.diff(closes).tolist()],
            "volumes": vols.tolist(),
        }
    )


def decode_each(
    bodies: list[bytes], day_ms: list[int], live: list[bool], src_offsets: list[int]
) -> list[np.ndarray | PayloadInvalid]:
    out: list[np.ndarray | PayloadInvalid] = []
    for body, d, lv, off in zip(bodies, day_ms, live, src_offsets, strict=True):
        try:
            out.append(
                decode_candles(
                    body, symbol="EUR-USD", side="BID", day_ms=d, live=lv, src_offset=off
                )
            )
        except PayloadInvalid as e:
            out.append(e)
    return out


def assert_same(got: np.ndarray | PayloadInvalid, want: np.ndarray | PayloadInvalid) -> None:
    if isinstance(want, PayloadInvalid):
        assert isinstance(got, PayloadInvalid), "decode_days accepted a day decode_candles rejects"
        assert type(got) is type(want)
        assert str(got) == str(want)
        assert (got.symbol, got.side, got.day, got.field, got.index) == (
            want.symbol,
            want.side,
            want.day,
            want.field,
            want.index,
        )
    else:
        assert isinstance(got, np.ndarray), str(got)
        assert got.dtype == RECORD_DTYPE
        assert got.tobytes() == want.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 2, 5, 300, 1440]), min_size=1, max_size=12),
    decimals=st.lists(st.sampled_from([0, 2, 3, 5, 8]), min_size=1, max_size=12),
    live=st.lists(st.booleans(), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_decode_days_equals_decode_candles_on_good_days(
    sizes: list[int], decimals: list[int], live: list[bool], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    days = [DAY_MS0 + int(rng.integers(-4000, 4000)) * DAY_MS for _ in sizes]
    bodies = [
        random_day(rng, d, decimals[i % len(decimals)], n)
        for i, (d, n) in enumerate(zip(days, sizes, strict=True))
    ]
    flags = [live[i % len(live)] for i in range(len(sizes))]
    offsets = sorted(int(x) for x in rng.integers(0, 2**40, size=len(sizes)))
    # The batch path itself accepts these (the equality below is not the fallback's).
    assert bulk._decode_chunk(bodies, days, flags, offsets) is not None
    got = decode_days(
        bodies, symbol="EUR-USD", side="BID", day_ms=days, live=flags, src_offsets=offsets
    )
    want = decode_each(bodies, days, flags, offsets)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)


@pytest.mark.parametrize("position", [0, 1, CHUNK_DAYS + 3])
@pytest.mark.parametrize(("body", "field", "index"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_decode_days_bad_day_in_a_batch_fails_as_alone(
    body: bytes, field: str, index: int | None, position: int
) -> None:
    """Every kind of bad payload, mixed into a batch of good and empty days (in the first
    or second chunk), gives exactly its error alone; every other day its own records."""
    rng = np.random.default_rng(position)
    n = max(position + 4, 6)
    days = [DAY_MS0] * n
    bodies = [GOOD if i % 3 else random_day(rng, DAY_MS0, 5, i % 4) for i in range(n)]
    bodies[position] = body
    flags = [i % 5 == 4 for i in range(n)]
    offsets = list(range(100, 100 + n))
    got = decode_days(
        bodies, symbol="EUR-USD", side="BID", day_ms=days, live=flags, src_offsets=offsets
    )
    want = decode_each(bodies, days, flags, offsets)
    alone = want[position]
    assert isinstance(alone, PayloadInvalid)
    assert (alone.field, alone.index) == (field, index)
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)


def test_decode_days_many_chunks_one_bad_day() -> None:
    """A bad day costs only its own chunk a day-by-day decode; results stay in order."""
    rng = np.random.default_rng(7)
    n = 3 * CHUNK_DAYS + 5
    days = [DAY_MS0 + i * DAY_MS for i in range(n)]
    bodies = [random_day(rng, d, 5, int(rng.integers(0, 40))) for d in days]
    bodies[CHUNK_DAYS + 1] = b"<html>503</html>"
    flags = [False] * n
    offsets = list(range(n))
    got = decode_days(
        bodies, symbol="EUR-USD", side="BID", day_ms=days, live=flags, src_offsets=offsets
    )
    want = decode_each(bodies, days, flags, offsets)
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)
    assert isinstance(got[CHUNK_DAYS + 1], PayloadInvalid)
    assert sum(isinstance(g, PayloadInvalid) for g in got) == 1


def test_decode_days_rejects_mismatched_argument_lengths() -> None:
    with pytest.raises(ValueError):
        decode_days([GOOD], symbol="EUR-USD", side="BID", day_ms=[], live=[False], src_offsets=[0])


@pytest.mark.real_data
def test_decode_days_real_days_equal_decode_candles(real_data: Path) -> None:
    bodies = [path.read_bytes() for path in _candle_files(real_data)]
    assert len(bodies) >= 3
    days = [json.loads(body)["timestamp"] // DAY_MS * DAY_MS for body in bodies]
    flags = [False] * len(bodies)
    offsets = list(range(len(bodies)))
    got = decode_days(
        bodies, symbol="EUR-USD", side="BID", day_ms=days, live=flags, src_offsets=offsets
    )
    for g, w in zip(got, decode_each(bodies, days, flags, offsets), strict=True):
        assert_same(g, w)
