"""An offline stand-in for the Dukascopy JSON API: a real HTTP server, a simulated clock,
deterministic data and injectable faults. Used by tests, demos and rebuild benchmarks.

Run it::

    python -m barstream.services.downloader.fake_upstream --port 8787 --start 2026-01-05 --speed 60 --seed 1
    python -m barstream.services.downloader.fake_upstream --fault '503:*/EUR-USD/*:count=3'
    python -m barstream.services.downloader.fake_upstream generate-cache DIR EUR-USD BID 2006-01-01 2025-12-31

API (the same URLs as Dukascopy; month and day 1-based, not zero padded)::

    GET /v1/candles/minute/{SYMBOL}/{SIDE}/{Y}/{M}/{D}   a final past day
    GET /v1/candles/minute/{SYMBOL}/{SIDE}?from={ms}      bars from `from` up to the simulated now

Behaviour, decided and kept stable:

- Data, in order of precedence: recorded responses from ``../shared/data/real/dukascopy-json``
  (EUR-USD BID 2019-02-04, 2026-07-10 and the empty Saturday 2026-07-11, served byte for byte);
  days built from the real HistData 1m bars (EUR-USD, GBP-USD, USD-JPY, XAU-USD; BID, ASK =
  BID + a small constant spread); otherwise a seeded random walk with the FX weekly shape
  (no bars Saturday, Sunday opens 17:00 New York, Friday closes 17:00 New York).
- HistData's clock is Europe/Berlin local time − 6 h; it is converted to UTC with zoneinfo.
  A requested day maps to a source day of the same weekday near the same day of year
  (2018 for even years, 2019 for odd years), so any range of dates tiles deterministically.
  Prices jump at day boundaries where consecutive days come from different source days.
- Days are encoded exactly like Dukascopy (same keys and order, delta encoding, multiplier
  1.0E-5, 1e-3 for JPY pairs, metals and indices, 0.1 for crypto). ``timestamp`` is the first
  bar's time and ``times[0]`` is 0; an empty day has ``timestamp`` = day start and nulls.
- The simulated clock (``SimClock``) maps the wall time at its creation (or last ``set``) to
  ``sim_start_ms`` and runs ``speed`` times faster; the HTTP ``Date`` header carries it. A day
  before the simulated today is final. The simulated today is served only by ``?from=``:
  bars from ``from`` (at most 7 days of them) up to the simulated now, the in-progress minute
  growing (open, then its extremes, then its close) as simulated time passes. A request by
  ``/{Y}/{M}/{D}`` for the simulated today or a later day answers **404** (the client then
  never caches a partial day as final); ``?from=`` beyond now answers an empty day. Zero-padded
  months/days, unknown symbols and days before ``history_start`` also answer 404.
- Faults (``Fault``) match the request path and query with a glob and fire ``count`` times or
  with ``probability`` (seeded). Kinds: 429 (with Retry-After), 500, 503, 404, slow (delay),
  truncate (Content-Length says more than is sent), empty, invalid_json, html, reset (TCP RST),
  revise (from then on the matching days are served revised: every price one point higher),
  corrupt (well-formed JSON whose bars are invalid: highs and lows swapped).
- Control plane (JSON): ``GET /_control/stats``, ``GET|POST /_control/clock`` (``sim_ms``,
  ``iso``, ``advance_ms``, ``speed``), ``GET|POST|DELETE /_control/faults``,
  ``POST /_control/reset``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import email.utils
import functools
import gzip
import io
import json
import math
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import numpy as np

from barstream import paths
from barstream.services.downloader.source import RawCache, day_start_ms
from barstream.shared.timeframe import DAY_MS, HOUR_MS, MINUTE_MS

__all__ = [
    "DEFAULT_REAL_DIR",
    "FAULT_KINDS",
    "BarGenerator",
    "DayBars",
    "FakeUpstream",
    "Fault",
    "HistDataGenerator",
    "RandomWalkGenerator",
    "SimClock",
    "encode_candles",
    "generate_cache",
    "main",
    "make_generator",
    "point_decimals",
]

DEFAULT_REAL_DIR: Final = paths.real_data_dir()
DEFAULT_HISTORY_START: Final = dt.date(2000, 1, 1)
SYMBOLS: Final = ("EUR-USD", "GBP-USD", "USD-JPY", "XAU-USD", "EUR-JPY", "DEU.IDX-EUR", "BTC-USD")
FAULT_KINDS: Final = (
    "429",
    "500",
    "503",
    "404",
    "slow",
    "truncate",
    "empty",
    "invalid_json",
    "html",
    "reset",
    "revise",
    "corrupt",
)
_NEW_YORK: Final = ZoneInfo("America/New_York")
_BERLIN: Final = ZoneInfo("Europe/Berlin")
_HISTDATA: Final = {
    "EUR-USD": "EURUSD",
    "GBP-USD": "GBPUSD",
    "USD-JPY": "USDJPY",
    "XAU-USD": "XAUUSD",
}
#: Recorded responses: (symbol, side, day) -> file under dukascopy-json.
_RECORDED: Final = {
    ("EUR-USD", "BID", dt.date(2019, 2, 4)): "bp.markets.ingest/EUR-USD_20190204.json",
    ("EUR-USD", "BID", dt.date(2026, 7, 10)): "candles-minute-EUR-USD-BID-2026-7-10.json",
    ("EUR-USD", "BID", dt.date(2026, 7, 11)): "candles-minute-EUR-USD-BID-2026-7-11-empty.json",
}


def point_decimals(symbol: str) -> int:
    """Decimals of a symbol's price grid: multiplier = 10**-decimals."""
    if "JPY" in symbol or symbol.startswith(("XAU", "XAG")) or ".IDX" in symbol:
        return 3
    if symbol.startswith(("BTC", "ETH")):
        return 1
    return 5


# --- bars and their encoding ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayBars:
    """One day of 1m bars in integer points: the fake's internal form of a day."""

    decimals: int
    ts_ms: np.ndarray  # int64
    open: np.ndarray  # int64 points
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # float64, absolute

    def __len__(self) -> int:
        return len(self.ts_ms)

    def take(self, sel: slice | np.ndarray) -> DayBars:
        return DayBars(
            self.decimals,
            self.ts_ms[sel],
            self.open[sel],
            self.high[sel],
            self.low[sel],
            self.close[sel],
            self.volume[sel],
        )

    def shifted(self, points: int) -> DayBars:
        """Every price moved by ``points`` (a valid revision; spread for ASK)."""
        return DayBars(
            self.decimals,
            self.ts_ms,
            self.open + points,
            self.high + points,
            self.low + points,
            self.close + points,
            self.volume,
        )


def empty_bars(decimals: int) -> DayBars:
    z = np.zeros(0, dtype=np.int64)
    return DayBars(decimals, z, z, z, z, z, np.zeros(0))


def encode_candles(bars: DayBars, *, empty_timestamp_ms: int) -> bytes:
    """Dukascopy's candle JSON for ``bars`` (``empty_timestamp_ms`` when there are none)."""
    mult = _java_multiplier(bars.decimals)
    if len(bars) == 0:
        nulls = '"open":null,"high":null,"low":null,"close":null'
        arrays = '"times":[],"opens":[],"highs":[],"lows":[],"closes":[],"volumes":[]'
        text = f'{{"timestamp":{empty_timestamp_ms},"multiplier":{mult},{nulls},"shift":60000,{arrays}}}'
        return text.encode()
    scale = 10**bars.decimals
    first = [repr(int(a[0]) / scale) for a in (bars.open, bars.high, bars.low, bars.close)]
    t0 = int(bars.ts_ms[0])
    times = np.diff(bars.ts_ms, prepend=t0) // MINUTE_MS
    parts = [
        f'{{"timestamp":{t0},"multiplier":{mult},"open":{first[0]},"high":{first[1]},'
        f'"low":{first[2]},"close":{first[3]},"shift":60000,"times":[',
        _join_ints(times),
    ]
    for key, values in (
        ("opens", bars.open),
        ("highs", bars.high),
        ("lows", bars.low),
        ("closes", bars.close),
    ):
        parts.append(f'],"{key}":[')
        parts.append(_join_ints(np.diff(values, prepend=values[0])))
    parts.append('],"volumes":[')
    parts.append(",".join(map(repr, bars.volume.tolist())))
    parts.append("]}")
    return "".join(parts).encode()


def decode_points(body: bytes) -> DayBars:
    """A candle-JSON body back into integer points (for recorded files; trusts its input)."""
    obj = json.loads(body)
    decimals = -round(math.log10(obj["multiplier"]))
    if not obj["times"]:
        return empty_bars(decimals)
    scale = 10**decimals
    ts = obj["timestamp"] + np.cumsum(np.array(obj["times"], dtype=np.int64)) * obj["shift"]
    cols = [
        round(obj[k] * scale) + np.cumsum(np.array(obj[k + "s"], dtype=np.int64))
        for k in ("open", "high", "low", "close")
    ]
    volumes = np.array(obj["volumes"], dtype=np.float64)
    return DayBars(decimals, ts, cols[0], cols[1], cols[2], cols[3], volumes)


def provisional_until(bars: DayBars, now_ms: int) -> DayBars:
    """The day as seen at ``now_ms``: finished minutes, plus the in-progress minute built
    along a fixed path open -> first extreme -> second extreme -> close."""
    done = int(np.searchsorted(bars.ts_ms, now_ms - MINUTE_MS, side="right"))
    shown = int(np.searchsorted(bars.ts_ms, now_ms, side="right"))
    if shown == done:
        return bars.take(slice(0, done))
    i = done
    frac = (now_ms - int(bars.ts_ms[i])) / MINUTE_MS
    o, h, lo, c = (int(a[i]) for a in (bars.open, bars.high, bars.low, bars.close))
    path = [o, lo, h, c] if c >= o else [o, h, lo, c]
    pos = frac * 3
    k = min(int(pos), 2)
    now_price = round(path[k] + (path[k + 1] - path[k]) * (pos - k))
    seen = [*path[: k + 1], now_price]
    part = bars.take(slice(0, i + 1))
    op, hp, lp, cp, vp = (
        a.copy() for a in (part.open, part.high, part.low, part.close, part.volume)
    )
    op[i], hp[i], lp[i], cp[i] = o, max(seen), min(seen), now_price
    vp[i] = round(float(bars.volume[i]) * frac, 2)
    return DayBars(bars.decimals, part.ts_ms, op, hp, lp, cp, vp)


def _java_multiplier(decimals: int) -> str:
    return f"{10.0**-decimals}" if decimals <= 3 else f"1.0E-{decimals}"


def _join_ints(values: np.ndarray) -> str:
    return ",".join(map(str, values.tolist()))


# --- generators -----------------------------------------------------------------------------


class BarGenerator(Protocol):
    def day(self, symbol: str, side: str, day: dt.date) -> DayBars: ...


def _day_rng(seed: int, symbol: str, side: str, day: dt.date, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng(
        [seed, zlib.crc32(symbol.encode()), zlib.crc32(side.encode()), day.toordinal(), salt]
    )


def _volumes(
    rng: np.random.Generator, high: np.ndarray, low: np.ndarray, decimals: int
) -> np.ndarray:
    """Plausible absolute volumes: lognormal, larger on wider bars, two decimals."""
    width = (high - low).astype(np.float64) / max(1, 10 ** (decimals - 5))
    vol = rng.lognormal(mean=3.5, sigma=0.6, size=len(high)) * (1.0 + width / 4.0)
    rounded: np.ndarray = np.round(vol, 2)
    return rounded


def _spread_points(bars: DayBars) -> int:
    return max(1, round(int(bars.open[0]) * 2e-5)) if len(bars) else 0


def _weekly_open_minutes(day: dt.date) -> np.ndarray:
    """Minute indexes of ``day`` (UTC) in which the FX market is open (Sun 17:00 → Fri 17:00 NY)."""
    noon = dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC)
    offset = noon.astimezone(_NEW_YORK).utcoffset()
    assert offset is not None
    edge = (17 * 60) - int(offset.total_seconds()) // 60  # 17:00 New York in UTC minutes
    wd = day.weekday()
    if wd == 5:
        return np.zeros(0, dtype=np.int64)
    if wd == 6:
        return np.arange(edge, 1440, dtype=np.int64)
    if wd == 4:
        return np.arange(0, edge, dtype=np.int64)
    return np.arange(1440, dtype=np.int64)


class RandomWalkGenerator:
    """Seeded random walk days with the FX weekly shape; a pure function of (seed, symbol, side, day)."""

    BASE: Final = {"XAU": 1300.0, "JPY": 110.0, "IDX": 12000.0, "BTC": 30000.0}

    def __init__(self, seed: int = 1) -> None:
        self.seed = seed

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars:
        decimals = point_decimals(symbol)
        minutes = _weekly_open_minutes(day)
        rng = _day_rng(self.seed, symbol, "BID", day)
        keep = rng.random(len(minutes)) > 0.02  # a few minutes without ticks
        minutes = minutes[keep]
        n = len(minutes)
        if n == 0:
            return empty_bars(decimals)
        base = next((v for k, v in self.BASE.items() if k in symbol), 1.15)
        ordinal = day.toordinal()
        level = base * (
            1 + 0.08 * math.sin(ordinal / 365.25 / 3 * 2 * math.pi) + 0.02 * math.sin(ordinal / 47)
        )
        scale = 10**decimals
        step = max(1.0, level * scale * 6e-5)  # about 0.6 pips a tick for EUR-USD
        ticks = np.cumsum(rng.normal(0.0, step, size=(n, 4)).reshape(-1)).reshape(n, 4)
        ticks = np.round(ticks + level * scale).astype(np.int64)
        bars = DayBars(
            decimals,
            day_start_ms(day) + minutes * MINUTE_MS,
            ticks[:, 0],
            ticks.max(axis=1),
            ticks.min(axis=1),
            ticks[:, 3],
            np.zeros(n),
        )
        bars = DayBars(
            decimals,
            bars.ts_ms,
            bars.open,
            bars.high,
            bars.low,
            bars.close,
            _volumes(rng, bars.high, bars.low, decimals),
        )
        return bars.shifted(_spread_points(bars)) if side == "ASK" else bars


@dataclass(frozen=True, slots=True)
class _HistSeries:
    decimals: int
    ts_ms: np.ndarray
    ohlc: np.ndarray  # (n, 4) int64 points
    day_index: dict[int, tuple[int, int]]  # UTC day number -> (start, stop)
    first_day: dt.date
    last_day: dt.date


_HISTDATA_LOCK: Final = threading.Lock()


def _load_histdata(folder: str, symbol: str) -> _HistSeries | None:
    """All HistData years of one symbol as UTC bars in points (loaded once per process, even
    when many server threads ask at the same time)."""
    with _HISTDATA_LOCK:
        return _load_histdata_once(folder, symbol)


@functools.lru_cache(maxsize=8)
def _load_histdata_once(folder: str, symbol: str) -> _HistSeries | None:
    code = _HISTDATA.get(symbol)
    if code is None:
        return None
    zips = sorted(Path(folder).glob(f"HISTDATA_COM_ASCII_{code}_M1*.zip"))
    if not zips:
        return None
    decimals = point_decimals(symbol)
    chunks = []
    for zpath in zips:
        with zipfile.ZipFile(zpath) as zf:
            name = next(n for n in zf.namelist() if n.lower().endswith(".csv"))
            text = zf.read(name).replace(b" ", b",").replace(b";", b",")
        chunks.append(np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2))
    table = np.concatenate(chunks)
    ymd = table[:, 0].astype(np.int64)
    hms = table[:, 1].astype(np.int64)
    days = (
        (ymd // 10000 - 1970).astype("datetime64[Y]").astype("datetime64[M]")
        + (ymd // 100 % 100 - 1).astype("timedelta64[M]")
    ).astype("datetime64[D]") + (ymd % 100 - 1).astype("timedelta64[D]")
    # HistData clock + 6 h = Berlin local time; local -> UTC with the day's Berlin offset.
    local_ms = (
        days.astype(np.int64) * DAY_MS
        + (hms // 10000) * HOUR_MS
        + (hms // 100 % 100) * MINUTE_MS
        + 6 * HOUR_MS
    )
    local_day = local_ms // DAY_MS
    uniq, inverse = np.unique(local_day, return_inverse=True)
    offsets = np.array(
        [_berlin_offset_ms(dt.date.fromordinal(int(d) + 719163)) for d in uniq], dtype=np.int64
    )
    ts = local_ms - offsets[inverse]
    scale = 10**decimals
    ohlc = np.round(table[:, 2:6] * scale).astype(np.int64)
    ohlc[:, 1] = ohlc.max(axis=1)
    ohlc[:, 2] = ohlc.min(axis=1)
    order = np.argsort(ts, kind="stable")
    ts, ohlc = ts[order], ohlc[order]
    keep = np.ones(len(ts), dtype=bool)
    keep[1:] = ts[1:] != ts[:-1]  # the DST fall-back hour can repeat a minute
    ts, ohlc = ts[keep], ohlc[keep]
    utc_day = ts // DAY_MS
    bounds = np.flatnonzero(np.diff(utc_day)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [len(ts)]])
    index = {int(utc_day[a]): (int(a), int(b)) for a, b in zip(starts, stops, strict=True)}
    epoch = dt.date(1970, 1, 1)
    first = epoch + dt.timedelta(days=int(utc_day[0]) + 1)  # the first and last days are partial
    last = epoch + dt.timedelta(days=int(utc_day[-1]) - 1)
    return _HistSeries(decimals, ts, ohlc, index, first, last)


def _berlin_offset_ms(day: dt.date) -> int:
    offset = dt.datetime(day.year, day.month, day.day, 12, tzinfo=_BERLIN).utcoffset()
    assert offset is not None
    return int(offset.total_seconds() * 1000)


class HistDataGenerator:
    """Days tiled from real HistData 1m bars; falls back to ``fallback`` for other symbols."""

    def __init__(
        self, folder: Path, *, seed: int = 1, fallback: BarGenerator | None = None
    ) -> None:
        self.folder = folder
        self.seed = seed
        self.fallback = fallback if fallback is not None else RandomWalkGenerator(seed)

    def source_day(self, symbol: str, day: dt.date) -> dt.date | None:
        """The HistData day that stands for ``day``: same weekday, near the same day of year."""
        series = _load_histdata(str(self.folder), symbol)
        if series is None:
            return None
        years = sorted({series.first_day.year, series.last_day.year})
        year = years[day.year % len(years)]
        try:
            anchor = day.replace(year=year)
        except ValueError:  # 29 February
            anchor = dt.date(year, 2, 28)
        delta = (day.weekday() - anchor.weekday() + 3) % 7 - 3
        src = anchor + dt.timedelta(days=delta)
        while src < series.first_day:
            src += dt.timedelta(days=7)
        while src > series.last_day:
            src -= dt.timedelta(days=7)
        return src

    def day(self, symbol: str, side: str, day: dt.date) -> DayBars:
        series = _load_histdata(str(self.folder), symbol)
        src = self.source_day(symbol, day)
        if series is None or src is None:
            return self.fallback.day(symbol, side, day)
        a, b = series.day_index.get((src - dt.date(1970, 1, 1)).days, (0, 0))
        if a == b:
            return empty_bars(series.decimals)
        ohlc = series.ohlc[a:b]
        ts = series.ts_ms[a:b] - day_start_ms(src) + day_start_ms(day)
        rng = _day_rng(self.seed, symbol, "BID", day, salt=1)
        bars = DayBars(
            series.decimals,
            ts,
            ohlc[:, 0],
            ohlc[:, 1],
            ohlc[:, 2],
            ohlc[:, 3],
            _volumes(rng, ohlc[:, 1], ohlc[:, 2], series.decimals),
        )
        return bars.shifted(_spread_points(bars)) if side == "ASK" else bars


def make_generator(seed: int = 1, real_dir: Path | None = DEFAULT_REAL_DIR) -> BarGenerator:
    """HistData tiling when ``real_dir/histdata-m1`` exists, else the seeded random walk."""
    if real_dir is not None and (real_dir / "histdata-m1").is_dir():
        return HistDataGenerator(real_dir / "histdata-m1", seed=seed)
    return RandomWalkGenerator(seed)


# --- simulated clock ------------------------------------------------------------------------


class SimClock:
    """Simulated time: ``sim_ms`` at the wall instant of the last set, advancing ``speed``×."""

    def __init__(
        self, sim_start_ms: int, speed: float = 1.0, *, wall: Callable[[], float] = time.monotonic
    ) -> None:
        self._wall = wall
        self._lock = threading.Lock()
        self._anchor_wall = wall()
        self._anchor_sim = sim_start_ms
        self._speed = speed

    @property
    def speed(self) -> float:
        return self._speed

    def now_ms(self) -> int:
        with self._lock:
            return self._anchor_sim + int((self._wall() - self._anchor_wall) * 1000 * self._speed)

    def today(self) -> dt.date:
        return dt.date(1970, 1, 1) + dt.timedelta(days=self.now_ms() // DAY_MS)

    def set(self, sim_ms: int, *, speed: float | None = None) -> None:
        with self._lock:
            self._anchor_wall = self._wall()
            self._anchor_sim = sim_ms
            if speed is not None:
                self._speed = speed

    def set_speed(self, speed: float) -> None:
        self.set(self.now_ms(), speed=speed)

    def advance(self, ms: int) -> None:
        self.set(self.now_ms() + ms)


# --- faults ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Fault:
    """One injected misbehaviour for requests whose path+query matches ``pattern`` (a glob).
    Fires ``count`` more times (None = always) or with ``probability``."""

    kind: str
    pattern: str = "*"
    count: int | None = 1
    probability: float = 1.0
    delay_s: float = 2.0
    retry_after_s: int = 1
    status: int = 200  # of the html/invalid_json/empty/truncate bodies

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind = {self.kind!r}: must be one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability = {self.probability!r}: must be in [0, 1]")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``KIND[:PATTERN[:key=value...]]``, e.g. ``503:*/EUR-USD/*:count=3``."""
        kind, _, rest = spec.partition(":")
        pattern, *options = rest.split(":") if rest else ["*"]
        fault = cls(kind, pattern or "*")
        for option in options:
            key, _, value = option.partition("=")
            if key == "count":
                fault.count = None if value in ("", "inf", "always") else int(value)
            elif key in ("p", "probability"):
                fault.probability = float(value)
                fault.count = None
            elif key in ("delay", "delay_s"):
                fault.delay_s = float(value)
            elif key in ("retry_after", "retry_after_s"):
                fault.retry_after_s = int(value)
            elif key == "status":
                fault.status = int(value)
            else:
                raise ValueError(f"fault option {key!r} in {spec!r}: unknown")
        fault.validate()
        return fault


class _FaultPlan:
    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(seed)
        self.faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def pick(self, target: str) -> Fault | None:
        """The first live non-revise fault matching ``target``, consuming one of its count."""
        with self._lock:
            for fault in self.faults:
                if fault.kind == "revise" or not fnmatchcase(target, fault.pattern):
                    continue
                if fault.count is not None and fault.count <= 0:
                    continue
                if fault.probability < 1.0 and self._rng.random() >= fault.probability:
                    continue
                if fault.count is not None:
                    fault.count -= 1
                return fault
            return None

    def revised(self, target: str) -> bool:
        with self._lock:
            return any(f.kind == "revise" and fnmatchcase(target, f.pattern) for f in self.faults)


# --- the server -----------------------------------------------------------------------------

_DAY_RE: Final = re.compile(
    r"^/v1/candles/minute/([A-Za-z0-9.]+-[A-Za-z0-9]+)/(BID|ASK)/(\d+)/(\d+)/(\d+)$"
)
_LIVE_RE: Final = re.compile(r"^/v1/candles/minute/([A-Za-z0-9.]+-[A-Za-z0-9]+)/(BID|ASK)$")
_HTML_PAGE: Final = (
    b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>Bad Gateway</h1><p>The upstream server is temporarily unavailable.</p></body></html>"
)


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class FakeUpstream:
    """The fake Dukascopy server. ``start()`` serves in a background thread; use as a context
    manager in tests. ``reply(target)`` gives the same answers without HTTP."""

    def __init__(
        self,
        *,
        clock: SimClock,
        generator: BarGenerator | None = None,
        seed: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        real_dir: Path | None = DEFAULT_REAL_DIR,
        symbols: Sequence[str] = SYMBOLS,
        history_start: dt.date = DEFAULT_HISTORY_START,
    ) -> None:
        self.clock = clock
        self.generator = generator if generator is not None else make_generator(seed, real_dir)
        self.seed = seed
        self.host = host
        self.port = port
        self.json_dir = real_dir / "dukascopy-json" if real_dir is not None else None
        self.symbols = frozenset(symbols)
        self.history_start = history_start
        self.faults = _FaultPlan(seed)
        self._stats_lock = threading.Lock()
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[str] = Counter()
        self.faults_fired: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeUpstream:
        server = ThreadingHTTPServer((self.host, self.port), _make_handler(self))
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name="fake-upstream", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # control
    def add_fault(self, fault: Fault | str) -> None:
        self.faults.add(Fault.parse(fault) if isinstance(fault, str) else fault)

    def clear_faults(self) -> None:
        self.faults.clear()

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests_total": sum(self.by_route.values()),
                "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
                "by_route": dict(self.by_route),
                "faults_fired": dict(self.faults_fired),
                "user_agents": dict(self.user_agents),
                "sim_now_ms": self.clock.now_ms(),
            }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.by_status.clear()
            self.by_route.clear()
            self.faults_fired.clear()
            self.user_agents.clear()

    def count(self, route: str, status: int | None = None) -> None:
        """One request served on ``route`` with ``status`` (0 = connection reset, no status)."""
        with self._stats_lock:
            self.by_route[route] += 1
            if status is not None:
                self.by_status[status] += 1

    def fired(self, kind: str) -> None:
        with self._stats_lock:
            self.faults_fired[kind] += 1

    # data
    def day_bars(self, symbol: str, side: str, day: dt.date) -> DayBars:
        """The final bars of ``day`` (recorded when available, else generated)."""
        recorded = self.recorded_body(symbol, side, day)
        if recorded is not None:
            return decode_points(recorded)
        return self.generator.day(symbol, side, day)

    def recorded_body(self, symbol: str, side: str, day: dt.date) -> bytes | None:
        name = _RECORDED.get((symbol, side, day))
        if name is None or self.json_dir is None:
            return None
        path = self.json_dir / name
        return path.read_bytes() if path.is_file() else None

    def day_body(self, symbol: str, side: str, day: dt.date, *, revised: bool = False) -> bytes:
        """The final response body of a past day."""
        if not revised:
            recorded = self.recorded_body(symbol, side, day)
            if recorded is not None:
                return recorded
        bars = self.day_bars(symbol, side, day)
        if revised and len(bars):
            bars = bars.shifted(1)
        return encode_candles(bars, empty_timestamp_ms=day_start_ms(day))

    def live_body(self, symbol: str, side: str, from_ms: int, *, revised: bool = False) -> bytes:
        """Bars from ``from_ms`` up to the simulated now, the last one in progress."""
        now_ms = self.clock.now_ms()
        decimals = point_decimals(symbol)
        first_day = dt.date(1970, 1, 1) + dt.timedelta(days=from_ms // DAY_MS)
        last_day = dt.date(1970, 1, 1) + dt.timedelta(days=max(from_ms, now_ms) // DAY_MS)
        pieces: list[DayBars] = []
        day = first_day
        while day <= last_day and (day - first_day).days < 7:
            pieces.append(self.day_bars(symbol, side, day))
            day += dt.timedelta(days=1)
        bars = DayBars(
            decimals,
            *(
                np.concatenate([getattr(p, k) for p in pieces])
                for k in ("ts_ms", "open", "high", "low", "close", "volume")
            ),
        )
        bars = bars.take(bars.ts_ms >= from_ms)
        bars = provisional_until(bars, now_ms)
        if revised and len(bars):
            bars = bars.shifted(1)
        return encode_candles(bars, empty_timestamp_ms=from_ms)

    def reply(self, target: str) -> _Reply:
        """The answer to ``GET target`` before faults (routing and the 404 rules)."""
        split = urlsplit(target)
        path = split.path
        revised = self.faults.revised(target)
        if m := _DAY_RE.match(path):
            symbol, side, y, mo, d = m.groups()
            if symbol not in self.symbols or mo.startswith("0") or d.startswith("0"):
                return _not_found(target)
            try:
                day = dt.date(int(y), int(mo), int(d))
            except ValueError:
                return _Reply(400, b'{"error":"invalid date"}')
            if day < self.history_start or day >= self.clock.today():
                return _not_found(target)
            return _Reply(200, self.day_body(symbol, side, day, revised=revised))
        if m := _LIVE_RE.match(path):
            symbol, side = m.groups()
            values = parse_qs(split.query).get("from", [])
            if symbol not in self.symbols:
                return _not_found(target)
            if len(values) != 1 or not values[0].lstrip("-").isdigit():
                return _Reply(400, b'{"error":"from must be ms since the epoch"}')
            from_ms = int(values[0])
            if from_ms < day_start_ms(self.history_start):
                return _not_found(target)
            return _Reply(200, self.live_body(symbol, side, from_ms, revised=revised))
        return _not_found(target)

    def control(self, method: str, target: str, payload: dict[str, Any]) -> _Reply:
        path = urlsplit(target).path
        if path == "/_control/stats" and method == "GET":
            return _json_reply(self.stats())
        if path == "/_control/reset" and method == "POST":
            self.reset_stats()
            self.clear_faults()
            return _json_reply({"ok": True})
        if path == "/_control/clock":
            if method == "POST":
                if "iso" in payload:
                    when = dt.datetime.fromisoformat(str(payload["iso"]))
                    if when.tzinfo is None:
                        when = when.replace(tzinfo=dt.UTC)
                    self.clock.set(int(when.timestamp() * 1000))
                if "sim_ms" in payload:
                    self.clock.set(int(payload["sim_ms"]))
                if "advance_ms" in payload:
                    self.clock.advance(int(payload["advance_ms"]))
                if "speed" in payload:
                    self.clock.set_speed(float(payload["speed"]))
            return _json_reply({"sim_now_ms": self.clock.now_ms(), "speed": self.clock.speed})
        if path == "/_control/faults":
            if method == "POST":
                fault = Fault.parse(payload["spec"]) if "spec" in payload else Fault(**payload)
                self.add_fault(fault)
            elif method == "DELETE":
                self.clear_faults()
            return _json_reply({"faults": [asdict(f) for f in self.faults.faults]})
        return _Reply(404, b'{"error":"unknown control endpoint"}')


def corrupt_candles(body: bytes) -> bytes:
    """Well-formed candle JSON whose bars break an invariant (highs and lows swapped, so
    high < low): what a broken upstream day looks like to the transformer."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body
    if isinstance(obj, dict) and obj.get("highs"):
        obj["high"], obj["low"] = obj.get("low"), obj.get("high")
        obj["highs"], obj["lows"] = obj.get("lows"), obj.get("highs")
    return json.dumps(obj, separators=(",", ":")).encode()


def _not_found(target: str) -> _Reply:
    return _Reply(404, json.dumps({"error": "not found", "path": target}).encode())


def _json_reply(obj: object) -> _Reply:
    return _Reply(200, json.dumps(obj).encode())


def _make_handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-dukascopy/1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header tells the simulated time: the downloader follows it.
            when = upstream.clock.now_ms() / 1000 if timestamp is None else timestamp
            return email.utils.formatdate(when, usegmt=True)

        def do_GET(self) -> None:
            if self.path.startswith("/_control/"):
                self._control("GET")
                return
            route = "live" if "?" in self.path else "day"
            with upstream._stats_lock:
                upstream.user_agents[self.headers.get("User-Agent", "")] += 1
            fault = upstream.faults.pick(self.path)
            if fault is not None:
                upstream.fired(fault.kind)
                if fault.kind == "slow":
                    time.sleep(fault.delay_s)
                else:
                    upstream.count(route, self._fault(fault))
                    return
            try:
                reply = upstream.reply(self.path)
            except Exception as exc:  # a bug in the fake must not kill the thread silently
                reply = _Reply(500, json.dumps({"error": repr(exc)}).encode())
            upstream.count(route, reply.status)
            self._send(reply)

        def do_POST(self) -> None:
            self._control("POST")

        def do_DELETE(self) -> None:
            self._control("DELETE")

        def _control(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                payload = json.loads(raw) if raw else {}
                reply = upstream.control(method, self.path, payload)
            except (ValueError, TypeError, KeyError) as exc:
                reply = _Reply(400, json.dumps({"error": str(exc)}).encode())
            upstream.count("control")
            self._send(reply, allow_gzip=False)

        def _fault(self, fault: Fault) -> int:
            """Misbehave as ``fault`` says; returns the status sent (0 = none)."""
            kind = fault.kind
            if kind in ("429", "500", "503", "404"):
                status = int(kind)
                headers = {"Retry-After": str(fault.retry_after_s)} if status == 429 else {}
                self._send(_Reply(status, b'{"error":"injected"}', headers=headers))
                return status
            if kind == "reset":
                self.close_connection = True
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.connection.close()
                return 0
            reply = upstream.reply(self.path)
            if kind == "empty":
                self._send(_Reply(fault.status, b""))
            elif kind == "invalid_json":
                self._send(_Reply(fault.status, reply.body[: max(1, len(reply.body) // 2)]))
            elif kind == "html":
                self._send(_Reply(fault.status, _HTML_PAGE, content_type="text/html"))
            elif kind == "corrupt":
                self._send(_Reply(fault.status, corrupt_candles(reply.body)))
            elif kind == "truncate":
                self._send(reply, truncate=True)
            return fault.status

        def _send(self, reply: _Reply, *, allow_gzip: bool = True, truncate: bool = False) -> None:
            body = reply.body
            gzipped = allow_gzip and "gzip" in self.headers.get("Accept-Encoding", "")
            if gzipped:
                body = gzip.compress(body, compresslevel=5, mtime=0)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(body)))
            if gzipped:
                self.send_header("Content-Encoding", "gzip")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            if truncate:
                self.send_header("Connection", "close")
                self.close_connection = True
            try:
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if truncate else body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout); nothing to do

        def finish(self) -> None:
            with contextlib.suppress(OSError, ValueError):
                super().finish()

    return Handler


# --- raw cache generation and the CLI -------------------------------------------------------


def generate_cache(
    root: Path | str,
    symbol: str,
    side: str,
    start: dt.date,
    end: dt.date,
    *,
    seed: int = 1,
    real_dir: Path | None = DEFAULT_REAL_DIR,
    durable: bool = True,
) -> int:
    """Write generated final days ``start..end`` (inclusive) into a raw cache at ``root`` in
    the RawCache layout; returns the number of day files written. Each file is written
    atomically; with ``durable`` one ``os.sync()`` at the end replaces thousands of fsyncs."""
    generator = make_generator(seed, real_dir)
    cache = RawCache(root, today=lambda: dt.date.max, durable=False)
    written = 0
    day = start
    while day <= end:
        body = encode_candles(
            generator.day(symbol, side, day), empty_timestamp_ms=day_start_ms(day)
        )
        cache.put(symbol, side, day, body)
        written += 1
        day += dt.timedelta(days=1)
    if durable:
        os.sync()
    return written


def _parse_when(text: str) -> int:
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _env_real_dir() -> Path:
    """The CLI edge is the one place that reads the environment (same variable as the tests)."""
    return paths.real_data_dir()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "generate-cache":
        return _main_generate(args[1:])
    parser = argparse.ArgumentParser(
        prog="python -m barstream.services.downloader.fake_upstream",
        description="Serve a fake Dukascopy JSON API on 127.0.0.1 with a simulated clock and "
        "injectable faults. Subcommand: generate-cache DIR SYMBOL SIDE START END.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8787, help="TCP port, 0 = ephemeral")
    parser.add_argument(
        "--start",
        default=None,
        help="simulated time at startup, ISO date/datetime UTC (default: now)",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of generated data and fault odds")
    parser.add_argument(
        "--real-dir",
        type=Path,
        default=_env_real_dir(),
        help="recorded responses and HistData (default $BARSTREAM_REAL_DATA or ../shared/data/real)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:GLOB[:count=N|p=P][:delay=S][:retry_after=S][:status=N]]",
        help=f"inject a fault; kinds: {', '.join(FAULT_KINDS)}",
    )
    opts = parser.parse_args(args)
    start_ms = _parse_when(opts.start) if opts.start else int(time.time() * 1000)
    real_dir = opts.real_dir if opts.real_dir.is_dir() else None
    upstream = FakeUpstream(
        clock=SimClock(start_ms, opts.speed),
        seed=opts.seed,
        host=opts.host,
        port=opts.port,
        real_dir=real_dir,
    )
    for spec in opts.fault:
        upstream.add_fault(spec)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    upstream.start()
    print(f"fake upstream listening on {upstream.url}", flush=True)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        upstream.stop()
    print(f"fake upstream stopped: {json.dumps(upstream.stats())}", flush=True)
    return 0


def _main_generate(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m barstream.services.downloader.fake_upstream generate-cache",
        description="Write generated days into a raw cache (RawCache layout).",
    )
    parser.add_argument("dir", type=Path)
    parser.add_argument("symbol")
    parser.add_argument("side", choices=("BID", "ASK"))
    parser.add_argument("start", type=dt.date.fromisoformat)
    parser.add_argument("end", type=dt.date.fromisoformat)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--real-dir", type=Path, default=_env_real_dir())
    parser.add_argument("--no-fsync", action="store_true", help="skip the final sync")
    opts = parser.parse_args(args)
    began = time.monotonic()
    n = generate_cache(
        opts.dir,
        opts.symbol,
        opts.side,
        opts.start,
        opts.end,
        seed=opts.seed,
        real_dir=opts.real_dir if opts.real_dir.is_dir() else None,
        durable=not opts.no_fsync,
    )
    print(f"wrote {n} days to {opts.dir} in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
