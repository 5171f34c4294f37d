"""Decode one Dukascopy candle-JSON response into 1-minute records — the transformer's pure core.

Contract
--------
``decode_candles(body, symbol=, side=, day_ms=, live=, src_offset=)`` takes the raw bytes of one
``/v1/candles/minute/...`` response and returns a ``RECORD_DTYPE`` array, or raises
``PayloadInvalid`` naming symbol, side, day, field and index. It does no I/O, keeps no state
and is deterministic: the same bytes always give byte-identical records.

The response (JSON object; unknown keys are ignored)::

    {"timestamp": ms, "multiplier": 1.0E-5, "open": p, "high": p, "low": p, "close": p,
     "shift": 60000, "times": [...], "opens": [...], "highs": [...], "lows": [...],
     "closes": [...], "volumes": [...]}

- bar time ``ts_ms[i] = timestamp + shift * cumsum(times)[i]``
- price ``x[i] = (round(x_first / multiplier) + cumsum(xs)[i]) / 10**decimals`` where
  ``multiplier = 10**-decimals``. All arithmetic is int64 *points*; the one conversion to
  float64 is a division by an exact power of ten, so every price is the float nearest to its
  decimal value (``1.14331``, not ``1.1433099999999999``).
- ``volumes`` are absolute values, copied as they are.
- an empty day (``"open": null`` and empty arrays, e.g. a Saturday) gives 0 records.

Output tail: ``src_offset`` = the downloader journal offset given, ``src_count`` = 1,
``flags``: every record of a live (current-day, ``?from=``) response has ``FLAG_LIVE`` and the
last one also ``FLAG_PROVISIONAL`` (the in-progress minute); the last record of a final day
has ``FLAG_DAY_END``. ``session`` and ``reserved`` are 0.

Validation — the whole payload is rejected (nothing returned) when any rule fails. The error's
``field`` is the JSON key, ``index`` the array position (bar number) where known:

========================  ===============================================  ==================
rule                      failure                                          field / index
========================  ===============================================  ==================
body                      empty, HTML page, malformed or truncated JSON    ``body`` / byte
types, keys               missing key, wrong type, number out of range     key / array pos
multiplier                not a power of ten in [1e-8, 1]                  ``multiplier``
shift                     not 60000 (minute candles)                       ``shift``
timestamp                 not a whole minute                               ``timestamp``
first-bar prices          null on a non-empty day, off the multiplier grid ``open`` … ``close``
array lengths             any array not as long as ``times``               array / shorter len
times                     ``times[i] < 1`` for i > 0 (not strictly rising)  ``times`` / i
times                     a bar outside ``[day_ms, day_ms + 86_400_000)``  ``times`` / i
prices                    price <= 0                                       ``opens`` … / i
prices                    ``high < low``                                   ``highs`` / i
prices                    open or close outside ``[low, high]``            ``opens``/``closes``
volumes                   negative or not finite                           ``volumes`` / i
========================  ===============================================  ==================

NaN and Infinity are not JSON: they fail as malformed JSON at their byte, located to their
key and index; ``1e999`` overflows and fails as "number out of range" at its path.

Many days at once
-----------------
``decode_days(bodies, symbol=, side=, day_ms=[...], live=[...], src_offsets=[...])`` gives, for
each day, exactly what ``decode_candles`` gives for it: its records (byte-identical) or the
``PayloadInvalid`` it raises. It parses each integer field of a chunk of days with one numpy
call and runs every rule once over the chunk's combined arrays; when any rule fails (or any
day is unusual), it decodes that chunk day by day with ``decode_candles`` for the exact errors.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Final

import msgspec
import numpy as np

from barstream.shared.errors import PayloadInvalid
from barstream.shared.record import FLAG_DAY_END, FLAG_LIVE, FLAG_PROVISIONAL, RECORD_DTYPE

__all__ = ["DAY_MS", "MINUTE_MS", "decode_candles", "decode_days", "multiplier_decimals"]

MINUTE_MS: Final = 60_000
DAY_MS: Final = 86_400_000
#: Bounds that keep every cumsum far from int64 overflow and every price exact in float64:
#: 1440 deltas of at most 2**40 points sum to < 2**51 < 2**53.
MAX_POINTS: Final = 2**40
MAX_TIME_STEPS: Final = 2**31
#: How far a first-bar price may sit from the multiplier grid, in points (float noise is ~1e-10).
GRID_TOLERANCE: Final = 1e-3

_Delta = Annotated[int, msgspec.Meta(ge=-MAX_POINTS, le=MAX_POINTS)]
_Steps = Annotated[int, msgspec.Meta(ge=-MAX_TIME_STEPS, le=MAX_TIME_STEPS)]
_Volume = Annotated[float, msgspec.Meta(ge=0.0)]


class _CandleDay(msgspec.Struct, frozen=True):
    """The wire shape of a candle response; msgspec checks types, keys and ranges in C."""

    timestamp: int
    multiplier: Annotated[float, msgspec.Meta(gt=0.0)]
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    shift: int
    times: list[_Steps]
    opens: list[_Delta]
    highs: list[_Delta]
    lows: list[_Delta]
    closes: list[_Delta]
    volumes: list[_Volume]


class _FastDay(msgspec.Struct, frozen=True):
    """The same shape with the integer arrays kept as raw JSON text, parsed by numpy."""

    timestamp: int
    multiplier: Annotated[float, msgspec.Meta(gt=0.0)]
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    shift: int
    times: msgspec.Raw
    opens: msgspec.Raw
    highs: msgspec.Raw
    lows: msgspec.Raw
    closes: msgspec.Raw
    volumes: list[_Volume]


class _Parsed:
    """A syntactically valid payload: header values and the six arrays as numpy arrays."""

    __slots__ = (
        "close",
        "closes",
        "high",
        "highs",
        "low",
        "lows",
        "multiplier",
        "open",
        "opens",
        "shift",
        "times",
        "timestamp",
        "volumes",
    )

    def __init__(self, p: _CandleDay | _FastDay, arrays: list[np.ndarray]) -> None:
        self.timestamp = p.timestamp
        self.multiplier = p.multiplier
        self.open, self.high, self.low, self.close = p.open, p.high, p.low, p.close
        self.shift = p.shift
        self.times, self.opens, self.highs, self.lows, self.closes = arrays
        self.volumes = np.array(p.volumes, dtype=np.float64)


_STRICT_DECODER: Final = msgspec.json.Decoder(_CandleDay)
_FAST_DECODER: Final = msgspec.json.Decoder(_FastDay)
_PRICE_KEYS: Final = ("open", "high", "low", "close")
_ARRAY_KEYS: Final = ("opens", "highs", "lows", "closes", "volumes")
_INT_KEYS: Final = ("times", "opens", "highs", "lows", "closes")
_INT_CHARS: Final = b"0123456789,-"


def decode_candles(
    body: bytes, *, symbol: str, side: str, day_ms: int, live: bool, src_offset: int
) -> np.ndarray:
    """Decode and validate one candle-JSON day; see the module docstring for the contract."""
    where = _Where(symbol, side, day_ms)
    payload = _parse(body, where)
    decimals = _check_header(payload, where)
    n = len(payload.times)
    if n == 0:
        return np.zeros(0, dtype=RECORD_DTYPE)
    _check_lengths(payload, n, where)
    first = _first_points(payload, decimals, where)
    _check_times(payload.times, payload.timestamp, day_ms, where)

    points = np.empty((4, n), dtype=np.int64)
    for row, deltas in enumerate((payload.opens, payload.highs, payload.lows, payload.closes)):
        deltas[0] += first[row]  # the arrays are ours: fold the first price into the cumsum
        np.cumsum(deltas, out=points[row])
    _check_prices(points, where)
    _check_volumes(payload.volumes, where)
    return _records(points, decimals, payload, live=live, src_offset=src_offset)


#: Days decoded together by ``decode_days``; a bad day costs its chunk a day-by-day decode.
CHUNK_DAYS: Final = 64
#: Bound on ``timestamp`` that keeps the batch's int64 time arithmetic from overflowing
#: (|cumsum(times)| * 60000 < 2**58); beyond it the chunk is decoded day by day.
_MAX_BATCH_TIMESTAMP: Final = 2**61
_TO_SPACE: Final = bytes.maketrans(b"[],", b"   ")


def decode_days(
    bodies: list[bytes],
    *,
    symbol: str,
    side: str,
    day_ms: list[int],
    live: list[bool],
    src_offsets: list[int],
) -> list[np.ndarray | PayloadInvalid]:
    """Decode many candle-JSON days: for each, its records or its ``PayloadInvalid`` — the
    same as ``decode_candles`` on that day alone. Good days are views of one array per chunk."""
    if not len(bodies) == len(day_ms) == len(live) == len(src_offsets):
        raise ValueError(
            f"{len(bodies)} bodies, {len(day_ms)} days, {len(live)} live flags, "
            f"{len(src_offsets)} offsets"
        )
    out: list[np.ndarray | PayloadInvalid] = []
    for a in range(0, len(bodies), CHUNK_DAYS):
        b = a + CHUNK_DAYS
        chunk = _decode_chunk(bodies[a:b], day_ms[a:b], live[a:b], src_offsets[a:b])
        if chunk is not None:
            out.extend(chunk)
            continue
        for body, d, lv, off in zip(
            bodies[a:b], day_ms[a:b], live[a:b], src_offsets[a:b], strict=True
        ):
            try:
                out.append(
                    decode_candles(
                        body, symbol=symbol, side=side, day_ms=d, live=lv, src_offset=off
                    )
                )
            except PayloadInvalid as e:
                out.append(e)
    return out


def _decode_chunk(
    bodies: list[bytes], day_ms: list[int], live: list[bool], src_offsets: list[int]
) -> list[np.ndarray] | None:
    """Every day's records, or None when any day is unusual or breaks any rule (the caller
    then decodes day by day). Accepts exactly what ``decode_candles``'s fast path accepts."""
    try:
        days = [_FAST_DECODER.decode(body) for body in bodies]
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    n_days = len(days)
    # Header rules, every day (also empty ones).
    decimals: list[int] = []
    for p in days:
        k = multiplier_decimals(p.multiplier)
        if k is None or p.shift != MINUTE_MS or p.timestamp % MINUTE_MS:
            return None
        if not -_MAX_BATCH_TIMESTAMP < p.timestamp < _MAX_BATCH_TIMESTAMP:
            return None
        decimals.append(k)
    # The integer arrays: one parse per field over the whole chunk.
    n_counts: np.ndarray | None = None
    inner: dict[str, list[memoryview]] = {}
    for key in _INT_KEYS:
        raws = [memoryview(getattr(p, key)) for p in days]
        joined = b"".join(raws)
        # Every day a flat array of integers (JSON-valid already: no "[1,,2]", no "--1").
        if joined.translate(None, _INT_CHARS) != b"[]" * n_days:
            return None
        buf = np.frombuffer(joined, dtype=np.uint8)
        day_at = np.flatnonzero(buf == 0x5B)  # each day's "["
        commas = np.flatnonzero(buf == 0x2C)
        key_counts = np.diff(np.searchsorted(commas, day_at), append=len(commas))
        key_counts += buf[day_at + 1] != 0x5D  # a non-empty array: one more value than commas
        if n_counts is None:
            n_counts = key_counts
        elif not np.array_equal(key_counts, n_counts):
            return None  # unequal lengths (or an empty day with values): day by day
        inner[key] = [raw[1:-1] for raw in raws if len(raw) > 2]
    assert n_counts is not None
    total = int(n_counts.sum())
    # One parse for the times, one for the four price fields (rows of one array).
    if total:
        times = _parse_joined(inner["times"], total, MAX_TIME_STEPS)
        deltas = _parse_joined(
            [v for key in ("opens", "highs", "lows", "closes") for v in inner[key]],
            4 * total,
            MAX_POINTS,
        )
        if times is None or deltas is None:
            return None
        points = deltas.reshape(4, total)
    else:
        times = np.zeros(0, dtype=np.int64)
        points = np.zeros((4, 0), dtype=np.int64)
    n: list[int] = n_counts.tolist()
    if [len(p.volumes) for p in days] != n:
        return None
    # Days with bars: first prices; empty days need nothing more (as decode_candles).
    keep = [i for i in range(n_days) if n[i]]
    firsts = np.empty((4, len(keep)), dtype=np.int64)
    for j, i in enumerate(keep):
        first = _first_points_or_none(days[i], decimals[i])
        if first is None:
            return None
        firsts[:, j] = first
    counts_kept = np.array([n[i] for i in keep], dtype=np.int64)
    starts = np.zeros(len(keep), dtype=np.int64)
    np.cumsum(counts_kept[:-1], out=starts[1:])
    # times: steps >= 1 after each day's first bar; first and last bar inside the day.
    if total:
        step_ok = times >= 1
        step_ok[starts] = True
        if not step_ok.all():
            return None
    timestamps = np.array([days[i].timestamp for i in keep], dtype=np.int64)
    days_ms = np.array([day_ms[i] for i in keep], dtype=np.int64)
    sums = np.add.reduceat(times, starts) if total else np.zeros(0, dtype=np.int64)
    first_ms = timestamps + times[starts] * MINUTE_MS
    last_ms = timestamps + sums * MINUTE_MS
    if len(keep) and (
        (first_ms < days_ms).any()
        or (first_ms >= days_ms + DAY_MS).any()
        or (last_ms >= days_ms + DAY_MS).any()
    ):
        return None
    # Prices: per-day cumsum over the combined arrays (each day's first price folded in).
    _segment_cumsum(points, starts, firsts)
    if total and (
        points.min() <= 0
        or (points[1] < points[2]).any()
        or (points[0] < points[2]).any()
        or (points[0] > points[1]).any()
        or (points[3] < points[2]).any()
        or (points[3] > points[1]).any()
    ):
        return None
    # Records, as _records builds them day by day, written as 8 words per record in one pass.
    words = np.empty((8, total), dtype=np.uint64)
    volumes = words[5].view(np.float64)
    if keep:
        np.concatenate([np.array(days[i].volumes, dtype=np.float64) for i in keep], out=volumes)
    if not np.isfinite(volumes).all() or (volumes < 0).any():
        return None
    ts_ms = words[0].view(np.int64)
    ts_ms[:] = times
    _segment_cumsum(ts_ms.reshape(1, total), starts, np.zeros((1, len(keep)), dtype=np.int64))
    ts_ms *= MINUTE_MS
    ts_ms += np.repeat(timestamps, counts_kept)
    scales = np.array([float(10 ** decimals[i]) for i in keep], dtype=np.float64)
    np.divide(points, np.repeat(scales, counts_kept), out=words[1:5].view(np.float64))
    words[6].view(np.int64)[:] = np.repeat(
        np.array([src_offsets[i] for i in keep], dtype=np.int64), counts_kept
    )
    # word 7: src_count (u4, = 1) | flags (u2) << 32 | session, reserved (0)
    live_kept = np.array([live[i] for i in keep], dtype=bool)
    flags = np.repeat(np.where(live_kept, FLAG_LIVE, 0).astype(np.uint64), counts_kept)
    ends = starts + counts_kept - 1
    flags[ends] |= np.where(live_kept, FLAG_PROVISIONAL, FLAG_DAY_END).astype(np.uint64)
    flags <<= np.uint64(32)
    flags |= np.uint64(1)
    words[7] = flags
    rec = np.empty(total, dtype=RECORD_DTYPE)
    rec.view(np.uint64).reshape(total, 8)[:] = words.T
    out: list[np.ndarray] = []
    pos = 0
    for i in range(n_days):
        out.append(rec[pos : pos + n[i]])
        pos += n[i]
    return out


def _parse_joined(parts: list[memoryview], count: int, bound: int) -> np.ndarray | None:
    """The integers of comma-separated ``parts`` (checked digits, commas and minus signs
    only), or None unless there are exactly ``count`` of them, all within ``bound``."""
    values = np.fromstring(b",".join(parts), dtype=np.int64, sep=",")
    if len(values) != count or values.max() > bound or values.min() < -bound:
        return None
    return values


def _segment_cumsum(values: np.ndarray, starts: np.ndarray, firsts: np.ndarray) -> None:
    """In place, each row: every segment's own cumsum plus its first value (``firsts[:, j]``
    for the segment starting at ``starts[j]``) — one cumsum over all segments, with the
    previous segment's last value folded out at each start (exact int64 throughout)."""
    if not values.shape[1]:
        return
    ends_at = firsts + np.add.reduceat(values, starts, axis=1)  # each segment's last value
    values[:, starts] += firsts
    values[:, starts[1:]] -= ends_at[:, :-1]
    np.cumsum(values, axis=1, out=values)


def _first_points_or_none(p: _FastDay, decimals: int) -> tuple[int, int, int, int] | None:
    """``_first_points`` without the error (the caller falls back to decode day by day)."""
    scale = 10**decimals
    points: list[int] = []
    for price in (p.open, p.high, p.low, p.close):
        if price is None or not math.isfinite(price):
            return None
        exact = price * scale
        rounded = round(exact)
        if abs(exact - rounded) > GRID_TOLERANCE or abs(rounded) > MAX_POINTS:
            return None
        points.append(rounded)
    return points[0], points[1], points[2], points[3]


def _records(
    points: np.ndarray, decimals: int, payload: _Parsed, *, live: bool, src_offset: int
) -> np.ndarray:
    out = np.zeros(points.shape[1], dtype=RECORD_DTYPE)
    ts_ms = np.cumsum(payload.times)
    ts_ms *= MINUTE_MS
    ts_ms += payload.timestamp
    out["ts_ms"] = ts_ms
    prices = points / float(10**decimals)  # the one conversion: exact decimal floats
    out["open"] = prices[0]
    out["high"] = prices[1]
    out["low"] = prices[2]
    out["close"] = prices[3]
    out["volume"] = payload.volumes
    out["src_offset"] = src_offset
    out["src_count"] = 1
    if live:
        out["flags"] = FLAG_LIVE
        out["flags"][-1] |= FLAG_PROVISIONAL
    else:
        out["flags"][-1] = FLAG_DAY_END
    return out


def multiplier_decimals(multiplier: float) -> int | None:
    """``k`` when ``multiplier == 10**-k`` for 0 <= k <= 8, else None."""
    if not (math.isfinite(multiplier) and multiplier > 0.0):
        return None
    k = -round(math.log10(multiplier))
    if not 0 <= k <= 8 or abs(multiplier * 10**k - 1.0) > 1e-9:
        return None
    return k


# --- helpers: one rule each, raising PayloadInvalid -------------------------------------------


class _Where:
    """Symbol/side/day of the payload being decoded, to build errors that say where."""

    __slots__ = ("day", "side", "symbol")

    def __init__(self, symbol: str, side: str, day_ms: int) -> None:
        self.symbol = symbol
        self.side = side
        self.day = dt.datetime.fromtimestamp(day_ms / 1000, dt.UTC).date().isoformat()

    def error(self, message: str, field: str, index: int | None = None) -> PayloadInvalid:
        return PayloadInvalid(
            message, symbol=self.symbol, side=self.side, day=self.day, field=field, index=index
        )


_PATH_RE: Final = re.compile(r"at `\$\.(\w+)(?:\[(\d+)\])?`")
_MISSING_RE: Final = re.compile(r"missing required field `(\w+)`")
_BYTE_RE: Final = re.compile(r"\(byte (\d+)\)")
_KEY_RE: Final = re.compile(rb'"(\w+)"\s*:\s*\[?')


def _parse(body: bytes, where: _Where) -> _Parsed:
    """Fast path: msgspec for the header, numpy for the compact integer arrays. Anything
    unusual (whitespace, floats, out-of-range values, any error) takes the strict path, which
    either raises the precise error or returns the same values."""
    if not body:
        raise where.error("empty body", "body")
    try:
        fast = _FAST_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _parse_strict(body, where)
    arrays: list[np.ndarray] = []
    for key in _INT_KEYS:
        parsed = _parse_ints(
            bytes(getattr(fast, key)), MAX_TIME_STEPS if key == "times" else MAX_POINTS
        )
        if parsed is None:
            return _parse_strict(body, where)
        arrays.append(parsed)
    return _Parsed(fast, arrays)


def _parse_ints(raw: bytes, bound: int) -> np.ndarray | None:
    """A compact JSON array of integers (already checked to be valid JSON) as int64, or None
    when it is anything else or holds a value beyond ``bound``."""
    if raw == b"[]":
        return np.zeros(0, dtype=np.int64)
    if raw[:1] != b"[" or raw.translate(None, _INT_CHARS) != b"[]":
        return None
    text = raw[1:-1]
    values = np.fromstring(text, dtype=np.int64, sep=",")
    if len(values) != text.count(b",") + 1:
        return None
    if len(values) and (values.max() > bound or values.min() < -bound):
        return None
    return values


def _parse_strict(body: bytes, where: _Where) -> _Parsed:
    try:
        p = _STRICT_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if m := _PATH_RE.search(message):
            index = int(m[2]) if m[2] is not None else None
            raise where.error(message, m[1], index) from None
        if m := _MISSING_RE.search(message):
            raise where.error(message, m[1]) from None
        raise where.error(message, "body") from None
    except msgspec.DecodeError as exc:
        head = body.lstrip()[:64].lower()
        if head.startswith(b"<"):
            raise where.error("an HTML page, not JSON", "body", 0) from None
        message = str(exc)
        m = _BYTE_RE.search(message)
        pos = int(m[1]) if m else len(body)
        field, index = _locate(body, pos)
        raise where.error(message, field, index) from None
    return _Parsed(p, [np.array(getattr(p, key), dtype=np.int64) for key in _INT_KEYS])


def _locate(body: bytes, pos: int) -> tuple[str, int | None]:
    """Best-effort key and array index of byte ``pos`` (error path only)."""
    last: re.Match[bytes] | None = None
    for m in _KEY_RE.finditer(body, 0, pos):
        last = m
    if last is None:
        return "body", pos
    key = last[1].decode("ascii")
    if not last[0].endswith(b"["):
        return key, None
    return key, body.count(b",", last.end(), pos)


def _check_header(p: _Parsed, where: _Where) -> int:
    decimals = multiplier_decimals(p.multiplier)
    if decimals is None:
        raise where.error(f"{p.multiplier!r} is not a power of ten in [1e-8, 1]", "multiplier")
    if p.shift != MINUTE_MS:
        raise where.error(f"{p.shift} is not {MINUTE_MS} (minute candles)", "shift")
    if p.timestamp % MINUTE_MS:
        raise where.error(f"{p.timestamp} is not a whole minute", "timestamp")
    return decimals


def _check_lengths(p: _Parsed, n: int, where: _Where) -> None:
    for key in _ARRAY_KEYS:
        got = len(getattr(p, key))
        if got != n:
            raise where.error(f"{got} values for {n} times", key, min(got, n))


def _first_points(p: _Parsed, decimals: int, where: _Where) -> tuple[int, int, int, int]:
    scale = 10**decimals
    points: list[int] = []
    for key in _PRICE_KEYS:
        price = getattr(p, key)
        if price is None:
            raise where.error("null on a day with bars", key)
        if not math.isfinite(price):
            raise where.error(f"{price!r} is not a finite price", key)
        exact = price * scale
        rounded = round(exact)
        if abs(exact - rounded) > GRID_TOLERANCE or abs(rounded) > MAX_POINTS:
            raise where.error(f"{price!r} is not a multiple of {p.multiplier!r}", key)
        points.append(rounded)
    return points[0], points[1], points[2], points[3]


def _check_times(times: np.ndarray, timestamp: int, day_ms: int, where: _Where) -> None:
    if len(times) > 1:
        bad = np.flatnonzero(times[1:] < 1)
        if len(bad):
            i = int(bad[0]) + 1
            raise where.error(f"step {int(times[i])}: times must strictly increase", "times", i)
    # Steps are bounded (>= 1 after the first), so the series is monotonic: check both ends.
    start = timestamp + int(times[0]) * MINUTE_MS
    end = timestamp + int(times.sum()) * MINUTE_MS
    if not day_ms <= start < day_ms + DAY_MS:
        raise where.error(f"bar at {start} ms is outside the day", "times", 0)
    if end >= day_ms + DAY_MS:
        steps = np.cumsum(times) * MINUTE_MS + timestamp
        i = int(np.argmax(steps >= day_ms + DAY_MS))
        raise where.error(f"bar at {int(steps[i])} ms is outside the day", "times", i)


def _check_prices(points: np.ndarray, where: _Where) -> None:
    """One pass per rule over all bars; the failing index is searched only on failure."""
    opens, highs, lows, closes = points
    if points.min() <= 0:
        for row, key in enumerate(("opens", "highs", "lows", "closes")):
            _fail_first(points[row] <= 0, where, key, "price is not positive")
    if (highs - lows).min() < 0:
        _fail_first(highs < lows, where, "highs", "high is below low")
    if min((opens - lows).min(), (highs - opens).min()) < 0:
        _fail_first((opens < lows) | (opens > highs), where, "opens", "open is outside [low, high]")
    if min((closes - lows).min(), (highs - closes).min()) < 0:
        _fail_first(
            (closes < lows) | (closes > highs), where, "closes", "close is outside [low, high]"
        )


def _check_volumes(volumes: np.ndarray, where: _Where) -> None:
    # msgspec already rejected negatives and overflow; this guards the float conversion.
    _fail_first(~np.isfinite(volumes) | (volumes < 0), where, "volumes", "not a finite volume >= 0")


def _fail_first(bad: np.ndarray, where: _Where, field: str, message: str) -> None:
    if bad.any():
        raise where.error(message, field, int(np.argmax(bad)))
