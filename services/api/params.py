"""The query parameters of the HTTP API, checked against the configuration (pure).

Everything a request names — symbol, side, timeframe, times, counts, zone, format — is
checked here before anything is asked of the gateway; what is wrong is an ``ApiError``
with the status that says so (404 for a topic the pipeline does not serve, 422 for a bad
value, 406 for a format we do not write) and a message naming the parameter, the value and
what is accepted.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from zoneinfo import ZoneInfo

from barstream.services.api import formats
from barstream.shared import gateway_protocol as gp
from barstream.shared.config import SIDES, Config
from barstream.shared.errors import ApiError

#: Longest text accepted for any one parameter (a longer one is refused before parsing).
MAX_PARAM_CHARS: Final = 64
#: The parameters each endpoint knows (any other is refused 422: a typo must not be ignored).
BARS_PARAMS: Final = frozenset(
    {"start", "end", "limit", "provisional", "tz", "format", "allow_utc", "week_label", "features"}
)
STREAM_PARAMS: Final = frozenset({"history", "closed_only", "tz", "features"})
#: A feature set's name (as ``[[features]]`` names are checked, services/features/spec.py).
_SET_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*$")
#: Oldest / newest time accepted (years 1970 … 2200).
_MIN_MS: Final = 0
_MAX_MS: Final = 7_258_118_400_000


@dataclass(frozen=True)
class TopicRef:
    symbol: str
    side: str
    timeframe: str

    @property
    def topic(self) -> str:
        return gp.topic_of(self.symbol, self.side, self.timeframe)


@dataclass(frozen=True)
class BarsQuery:
    ref: TopicRef
    start_ms: int | None
    end_ms: int | None
    limit: int | None
    provisional: bool
    tz: ZoneInfo | None
    fmt: str
    week_label: str = "monday"  # mt4: the day 1W bars are labelled with
    features: str | None = None  # a feature set: the bars joined with its outputs

    @property
    def topic(self) -> str:
        """The gateway topic asked: the bars', or their feature topic ``SYMBOL/SIDE/TF.SET``."""
        return feature_topic(self.ref, self.features)


@dataclass(frozen=True)
class StreamQuery:
    ref: TopicRef
    history: int
    closed_only: bool
    tz: ZoneInfo | None
    features: str | None = None

    @property
    def topic(self) -> str:
        return feature_topic(self.ref, self.features)


def feature_topic(ref: TopicRef, features: str | None) -> str:
    """``ref``'s topic, or with a feature set its feature topic ``SYMBOL/SIDE/TF.SET``."""
    return ref.topic if features is None else f"{ref.topic}.{features}"


def feature_set(params: Mapping[str, str]) -> str | None:
    """``features=SET``: a feature set's name (None when absent or empty); 400 when it
    cannot be one. Whether the gateway serves it is asked of the gateway (404 there)."""
    value = params.get("features")
    if value is None or value == "":
        return None
    if len(value) > MAX_PARAM_CHARS or not _SET_NAME.match(value):
        raise ApiError(
            400,
            "bad-features",
            f"features={value[:MAX_PARAM_CHARS]!r} is not a feature set name: lowercase "
            "letters, digits and _, first a letter (a [[features]] name, e.g. core); "
            "GET /v1/topics lists the feature topics",
        )
    return value


def timeframes(cfg: Config) -> list[str]:
    """The timeframes the gateway serves: 1m and the resampler's."""
    return ["1m", *(tf for tf in cfg.resampler.timeframes if tf != "1m")]


def topic_ref(cfg: Config, symbol: str, side: str, timeframe: str) -> TopicRef:
    """The topic a path names, or 404 naming what exists."""
    for name, value in (("symbol", symbol), ("side", side), ("timeframe", timeframe)):
        if len(value) > MAX_PARAM_CHARS:
            raise ApiError(404, "unknown-topic", f"{name} is {len(value)} characters long")
    if symbol not in cfg.pipeline.symbols:
        raise ApiError(
            404,
            "unknown-symbol",
            f"symbol {symbol!r} is not served; served: {', '.join(cfg.pipeline.symbols)}",
        )
    side = side.upper()
    if side not in cfg.pipeline.sides:
        served = ", ".join(s for s in SIDES if s in cfg.pipeline.sides)
        raise ApiError(404, "unknown-side", f"side {side!r} is not served; served: {served}")
    tfs = timeframes(cfg)
    if timeframe not in tfs:
        raise ApiError(
            404,
            "unknown-timeframe",
            f"timeframe {timeframe!r} is not served; served: {', '.join(tfs)}",
        )
    return TopicRef(symbol, side, timeframe)


def _text(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_PARAM_CHARS:
        raise ApiError(
            422, "bad-param", f"{name}: {len(value)} characters; at most {MAX_PARAM_CHARS}"
        )
    return value


def time_ms(params: Mapping[str, str], name: str) -> int | None:
    """``name`` as UTC ms: ISO 8601 date or date-time (UTC unless it has an offset) or ms
    since the epoch."""
    text = _text(params, name)
    if text is None:
        return None
    try:
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            value = int(when.timestamp() * 1000)
    except (ValueError, OverflowError):
        raise ApiError(
            422,
            "bad-date",
            f"{name}={text!r} is not a date: use ISO 8601 (2019-01-02, 2019-01-02T10:30:00Z) "
            "or milliseconds since the epoch",
        ) from None
    if not _MIN_MS <= value <= _MAX_MS:
        raise ApiError(422, "bad-date", f"{name}={text!r} is outside 1970 … 2200")
    return value


def count(params: Mapping[str, str], name: str, default: int | None, most: int) -> int | None:
    text = _text(params, name)
    if text is None:
        return default
    if not text.isdigit():
        raise ApiError(422, "bad-param", f"{name}={text!r} must be a whole number >= 0")
    value = int(text)
    if value > most:
        raise ApiError(
            413,
            "over-limit",
            f"{name}={value} is over the limit of {most} bars per request; ask in parts",
            limit=most,
        )
    return value


def flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    text = _text(params, name)
    if text is None:
        return default
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ApiError(422, "bad-param", f"{name}={text!r} must be true or false")


def zone(params: Mapping[str, str]) -> ZoneInfo | None:
    text = _text(params, "tz")
    if text is None:
        return None
    try:
        return formats.zone(text)
    except ValueError as e:
        raise ApiError(422, "bad-param", str(e)) from None


def unknown(params: Mapping[str, str], known: frozenset[str]) -> None:
    extra = sorted(set(params) - known)
    if extra:
        raise ApiError(
            422,
            "bad-param",
            f"unknown parameter(s) {', '.join(repr(x[:MAX_PARAM_CHARS]) for x in extra)}; "
            f"known: {', '.join(sorted(known))}",
        )


def bars_query(cfg: Config, ref: TopicRef, params: Mapping[str, str], accept: str) -> BarsQuery:
    unknown(params, BARS_PARAMS)
    fmt = _text(params, "format")
    if fmt is None:
        chosen = formats.negotiate(accept)
        if chosen is None:
            raise ApiError(
                406,
                "unknown-format",
                f"Accept: {accept[:200]!r} names no format we write; use one of "
                f"{', '.join(formats.MEDIA_TYPES.values())} or format={'|'.join(formats.FORMATS)}",
            )
        fmt = chosen
    elif fmt not in formats.FORMATS:
        raise ApiError(
            406, "unknown-format", f"format={fmt!r}: use one of {', '.join(formats.FORMATS)}"
        )
    features = feature_set(params)
    if fmt == "mt4" and features is not None:
        raise ApiError(
            400,
            "mt4-no-features",
            f"features={features}: format=mt4 has fixed columns (date, time, OHLCV) and cannot "
            "carry feature outputs; drop features, or use format="
            + "|".join(f for f in formats.FORMATS if f != "mt4"),
        )
    if fmt == "mt4" and not flag(params, "allow_utc", False):
        from barstream import export
        from barstream.shared.header import StoreMeta

        meta = StoreMeta(ref.symbol, ref.side, ref.timeframe, cfg.resampler.alignment)
        why = export.mt4_mismatch(meta)
        if why is not None:
            raise ApiError(422, "mt4-misaligned", why.replace("--allow-utc", "allow_utc=true"))
    week_label = params.get("week_label", "monday")
    if week_label not in ("monday", "sunday"):
        raise ApiError(422, "bad-param", f"week_label={week_label[:40]!r}: use monday or sunday")
    start, end = time_ms(params, "start"), time_ms(params, "end")
    if start is not None and end is not None and start > end:
        raise ApiError(422, "bad-range", f"start {params['start']} is after end {params['end']}")
    return BarsQuery(
        ref,
        start,
        end,
        count(params, "limit", None, cfg.api.max_records),
        flag(params, "provisional", True),
        zone(params),
        fmt,
        week_label,
        features,
    )


def stream_query(cfg: Config, ref: TopicRef, params: Mapping[str, str]) -> StreamQuery:
    unknown(params, STREAM_PARAMS)
    # a stream's history is one snapshot request: at most what the gateway answers at once
    most = min(cfg.api.max_records, 100_000, cfg.gateway.max_request_records)
    history = count(params, "history", 0, most)
    assert history is not None
    return StreamQuery(
        ref, history, flag(params, "closed_only", False), zone(params), feature_set(params)
    )
