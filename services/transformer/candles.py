"""Candle JSON → arrays: the wire shape of one Dukascopy candle response and its parsing.

Contract
--------
The response (JSON object; unknown keys are ignored)::

    {"timestamp": ms, "multiplier": 1.0E-5, "open": p, "high": p, "low": p, "close": p,
     "shift": 60000, "times": [...], "opens": [...], "highs": [...], "lows": [...],
     "closes": [...], "volumes": [...]}

:func:`parse` turns the bytes into a :class:`Parsed`: the header values and the five integer
arrays as int64 numpy arrays (``times`` in steps of ``shift``, prices as point deltas), the
volumes as float64. It checks syntax, types, keys and ranges only (msgspec, in C: a delta
within ``MAX_POINTS``, a step within ``MAX_TIME_STEPS``, a volume >= 0); the semantic rules
are ``rules``. The fast path parses the compact integer arrays with numpy; anything unusual
takes the strict msgspec path, which returns the same values or raises ``PayloadInvalid``
located by :class:`Where` (symbol, side, day) plus the JSON key and array index.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Final

import msgspec
import numpy as np

from barstream.shared.errors import PayloadInvalid

#: Bounds that keep every cumsum far from int64 overflow and every price exact in float64:
#: 1440 deltas of at most 2**40 points sum to < 2**51 < 2**53.
MAX_POINTS: Final = 2**40
MAX_TIME_STEPS: Final = 2**31

_Delta = Annotated[int, msgspec.Meta(ge=-MAX_POINTS, le=MAX_POINTS)]
_Steps = Annotated[int, msgspec.Meta(ge=-MAX_TIME_STEPS, le=MAX_TIME_STEPS)]
_Volume = Annotated[float, msgspec.Meta(ge=0.0)]


class _Header(msgspec.Struct, frozen=True):
    """The header of a candle response (both shapes below); msgspec checks types in C."""

    timestamp: int
    multiplier: Annotated[float, msgspec.Meta(gt=0.0)]
    open: float | None
    high: float | None
    low: float | None
    close: float | None
    shift: int


class CandleDay(_Header, frozen=True):
    """The wire shape of a candle response; msgspec checks types, keys and ranges in C."""

    times: list[_Steps]
    opens: list[_Delta]
    highs: list[_Delta]
    lows: list[_Delta]
    closes: list[_Delta]
    volumes: list[_Volume]


class FastDay(_Header, frozen=True):
    """The same shape with the integer arrays kept as raw JSON text, parsed by numpy."""

    times: msgspec.Raw
    opens: msgspec.Raw
    highs: msgspec.Raw
    lows: msgspec.Raw
    closes: msgspec.Raw
    volumes: list[_Volume]


class Parsed:
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

    def __init__(self, p: CandleDay | FastDay, arrays: list[np.ndarray]) -> None:
        self.timestamp = p.timestamp
        self.multiplier = p.multiplier
        self.open, self.high, self.low, self.close = p.open, p.high, p.low, p.close
        self.shift = p.shift
        self.times, self.opens, self.highs, self.lows, self.closes = arrays
        self.volumes = np.array(p.volumes, dtype=np.float64)


_STRICT_DECODER: Final = msgspec.json.Decoder(CandleDay)
FAST_DECODER: Final = msgspec.json.Decoder(FastDay)
INT_KEYS: Final = ("times", "opens", "highs", "lows", "closes")
INT_CHARS: Final = b"0123456789,-"


class Where:
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


def parse(body: bytes, where: Where) -> Parsed:
    """Fast path: msgspec for the header, numpy for the compact integer arrays. Anything
    unusual (whitespace, floats, out-of-range values, any error) takes the strict path, which
    either raises the precise error or returns the same values."""
    if not body:
        raise where.error("empty body", "body")
    try:
        fast = FAST_DECODER.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _parse_strict(body, where)
    arrays: list[np.ndarray] = []
    for key in INT_KEYS:
        parsed = _parse_ints(
            bytes(getattr(fast, key)), MAX_TIME_STEPS if key == "times" else MAX_POINTS
        )
        if parsed is None:
            return _parse_strict(body, where)
        arrays.append(parsed)
    return Parsed(fast, arrays)


def _parse_ints(raw: bytes, bound: int) -> np.ndarray | None:
    """A compact JSON array of integers (already checked to be valid JSON) as int64, or None
    when it is anything else or holds a value beyond ``bound``."""
    if raw == b"[]":
        return np.zeros(0, dtype=np.int64)
    if raw[:1] != b"[" or raw.translate(None, INT_CHARS) != b"[]":
        return None
    text = raw[1:-1]
    values = np.fromstring(text, dtype=np.int64, sep=",")
    if len(values) != text.count(b",") + 1:
        return None
    if len(values) and (values.max() > bound or values.min() < -bound):
        return None
    return values


def _parse_strict(body: bytes, where: Where) -> Parsed:
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
    return Parsed(p, [np.array(getattr(p, key), dtype=np.int64) for key in INT_KEYS])


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
