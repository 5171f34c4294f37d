"""The fake Dukascopy upstream: data, routes, control plane and statistics of one server.

API (the same URLs as Dukascopy; month and day 1-based, not zero padded)::

    GET /v1/candles/minute/{SYMBOL}/{SIDE}/{Y}/{M}/{D}   a final past day
    GET /v1/candles/minute/{SYMBOL}/{SIDE}?from={ms}      bars from `from` up to the simulated now
    GET /v1/instruments/{SYMBOL}                          the instrument's metadata (``instruments``)

Behaviour, decided and kept stable:

- Data, in order of precedence: recorded responses from ``REAL_DIR/dukascopy-json`` (EUR-USD
  BID 2019-02-04, 2026-07-10 and the empty Saturday 2026-07-11, served byte for byte), where
  ``real_dir`` is given (the command line passes ``barstream.paths.real_data_dir()``); else
  the generator (``generators``: HistData tiling when ``REAL_DIR/histdata-m1`` exists, else
  the seeded random walk), encoded as ``encoding`` says.
- A day before the simulated today (``clock``) is final. The simulated today is served only
  by ``?from=``: bars from ``from`` (at most 7 days of them) up to the simulated now, the
  in-progress minute growing (open, then its extremes, then its close) as simulated time
  passes. A request by ``/{Y}/{M}/{D}`` for the simulated today or a later day answers
  **404** (the client then never caches a partial day as final); ``?from=`` beyond now
  answers an empty day. Zero-padded months/days, unknown symbols and days before the
  symbol's start (``instrument_starts[symbol]``, else ``history_start``) also answer 404; an impossible date or a bad ``from`` answers 400.
- Faults (``faults``) are applied by the HTTP handler (``handler``) around ``reply``; the
  ``revise`` fault is asked here, per request.
- Control plane (JSON): ``GET /_control/stats`` (``connections_total``: TCP connections
  accepted), ``GET /_control/requests`` (data requests per target, to see a URL asked twice), ``GET|POST /_control/clock`` (``sim_ms``,
  ``iso``, ``advance_ms``, ``speed``), ``GET|POST|DELETE /_control/faults`` (POST a
  ``{"spec": …}`` or the Fault fields), ``POST /_control/reset`` (statistics and faults).

``reply(target)`` gives the same answers without HTTP; ``start()`` serves them on a
``ThreadingHTTPServer`` in a background thread (``port=0``: an ephemeral port, read it back
from ``port``/``url``); a context manager in tests.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from barstream.fake.bars import DayBars, concat, point_decimals, provisional_until
from barstream.fake.clock import SimClock, parse_iso_ms
from barstream.fake.encoding import decode_points, encode_candles
from barstream.fake.faults import Fault, FaultPlan
from barstream.fake.generators import BarGenerator, make_generator
from barstream.fake.handler import Reply, make_handler
from barstream.fake.instruments import instrument_document
from barstream.services.downloader.source import day_start_ms
from barstream.shared.timeframe import DAY_MS

DEFAULT_HISTORY_START: Final = dt.date(2000, 1, 1)
SYMBOLS: Final = ("EUR-USD", "GBP-USD", "USD-JPY", "XAU-USD", "EUR-JPY", "DEU.IDX-EUR", "BTC-USD")
#: Recorded responses: (symbol, side, day) -> file under dukascopy-json.
RECORDED: Final = {
    ("EUR-USD", "BID", dt.date(2019, 2, 4)): "bp.markets.ingest/EUR-USD_20190204.json",
    ("EUR-USD", "BID", dt.date(2026, 7, 10)): "candles-minute-EUR-USD-BID-2026-7-10.json",
    ("EUR-USD", "BID", dt.date(2026, 7, 11)): "candles-minute-EUR-USD-BID-2026-7-11-empty.json",
}
_DAY_RE: Final = re.compile(
    r"^/v1/candles/minute/([A-Za-z0-9.]+-[A-Za-z0-9]+)/(BID|ASK)/(\d+)/(\d+)/(\d+)$"
)
_LIVE_RE: Final = re.compile(r"^/v1/candles/minute/([A-Za-z0-9.]+-[A-Za-z0-9]+)/(BID|ASK)$")
_INSTRUMENT_RE: Final = re.compile(r"^/v1/instruments/([A-Za-z0-9.]+-[A-Za-z0-9]+)$")


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
        real_dir: Path | None = None,
        symbols: Sequence[str] = SYMBOLS,
        history_start: dt.date = DEFAULT_HISTORY_START,
        instrument_starts: Mapping[str, dt.date] | None = None,
    ) -> None:
        self.clock = clock
        self.generator = generator if generator is not None else make_generator(seed, real_dir)
        self.seed = seed
        self.host = host
        self.port = port
        self.json_dir = real_dir / "dukascopy-json" if real_dir is not None else None
        self.symbols = frozenset(symbols)
        self.history_start = history_start
        #: Per-symbol first day (its instrument document and its 404s); else history_start.
        self.instrument_starts = dict(instrument_starts or {})
        self.faults = FaultPlan(seed)
        self._stats_lock = threading.Lock()
        self.by_status: Counter[int] = Counter()
        self.by_route: Counter[str] = Counter()
        self.faults_fired: Counter[str] = Counter()
        self.user_agents: Counter[str] = Counter()
        self.connections_total = 0  # TCP connections accepted
        self.by_path: Counter[str] = Counter()  # data requests per target (GET /_control/requests)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> FakeUpstream:
        server = ThreadingHTTPServer((self.host, self.port), make_handler(self))
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
                "connections_total": self.connections_total,
                "sim_now_ms": self.clock.now_ms(),
            }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self.by_status.clear()
            self.by_route.clear()
            self.faults_fired.clear()
            self.user_agents.clear()
            self.connections_total = 0
            self.by_path.clear()

    def count(self, route: str, status: int | None = None) -> None:
        """One request served on ``route`` with ``status`` (0 = connection reset, no status)."""
        with self._stats_lock:
            self.by_route[route] += 1
            if status is not None:
                self.by_status[status] += 1

    def count_connection(self) -> None:
        with self._stats_lock:
            self.connections_total += 1

    def count_path(self, target: str) -> None:
        with self._stats_lock:
            self.by_path[target] += 1

    def requests_by_path(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self.by_path)

    def instrument_start(self, symbol: str) -> dt.date:
        """The first day served for ``symbol`` (its document's ``histories`` start)."""
        return self.instrument_starts.get(symbol, self.history_start)

    def fired(self, kind: str) -> None:
        with self._stats_lock:
            self.faults_fired[kind] += 1

    def count_user_agent(self, user_agent: str) -> None:
        with self._stats_lock:
            self.user_agents[user_agent] += 1

    # data
    def day_bars(self, symbol: str, side: str, day: dt.date) -> DayBars:
        """The final bars of ``day`` (recorded when available, else generated)."""
        recorded = self.recorded_body(symbol, side, day)
        if recorded is not None:
            return decode_points(recorded)
        return self.generator.day(symbol, side, day)

    def recorded_body(self, symbol: str, side: str, day: dt.date) -> bytes | None:
        name = RECORDED.get((symbol, side, day))
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
        bars = concat(decimals, pieces)
        bars = bars.take(bars.ts_ms >= from_ms)
        bars = provisional_until(bars, now_ms)
        if revised and len(bars):
            bars = bars.shifted(1)
        return encode_candles(bars, empty_timestamp_ms=from_ms)

    def reply(self, target: str) -> Reply:
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
                return Reply(400, b'{"error":"invalid date"}')
            if day < self.instrument_start(symbol) or day >= self.clock.today():
                return _not_found(target)
            return Reply(200, self.day_body(symbol, side, day, revised=revised))
        if m := _LIVE_RE.match(path):
            symbol, side = m.groups()
            values = parse_qs(split.query).get("from", [])
            if symbol not in self.symbols:
                return _not_found(target)
            if len(values) != 1 or not values[0].lstrip("-").isdigit():
                return Reply(400, b'{"error":"from must be ms since the epoch"}')
            from_ms = int(values[0])
            if from_ms < day_start_ms(self.instrument_start(symbol)):
                return _not_found(target)
            return Reply(200, self.live_body(symbol, side, from_ms, revised=revised))
        if m := _INSTRUMENT_RE.match(path):
            code = m.group(1)
            if code not in self.symbols:
                return _not_found(target)
            start = self.instrument_start(code)
            return Reply(200, instrument_document(code, start, self.json_dir))
        return _not_found(target)

    def control(self, method: str, target: str, payload: dict[str, Any]) -> Reply:
        path = urlsplit(target).path
        if path == "/_control/stats" and method == "GET":
            return _json_reply(self.stats())
        if path == "/_control/requests" and method == "GET":
            return _json_reply(self.requests_by_path())
        if path == "/_control/reset" and method == "POST":
            self.reset_stats()
            self.clear_faults()
            return _json_reply({"ok": True})
        if path == "/_control/clock":
            if method == "POST":
                if "iso" in payload:
                    self.clock.set(parse_iso_ms(str(payload["iso"])))
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
        return Reply(404, b'{"error":"unknown control endpoint"}')


def _not_found(target: str) -> Reply:
    return Reply(404, json.dumps({"error": "not found", "path": target}).encode())


def _json_reply(obj: object) -> Reply:
    return Reply(200, json.dumps(obj).encode())
