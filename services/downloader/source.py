"""The Dukascopy JSON API client and its request budget — the downloader's edge (the raw
cache, where fetched bodies are kept, is ``raw_cache.py``).

Contract
--------
- ``Source`` is the protocol the downloader service talks to: ``fetch_day`` (a final past
  day) and ``fetch_live`` (the current day so far). ``HttpSource`` is the real client; tests
  and demos point it at ``barstream.fake`` by ``base_url``.
- URLs (month and day 1-based, not zero padded)::

      past day     {base}/v1/candles/minute/{SYMBOL}/{SIDE}/{Y}/{M}/{D}
      current day  {base}/v1/candles/minute/{SYMBOL}/{SIDE}?from={UTC day start ms}

- Every HTTP request first takes a token from the one ``RequestBudget`` of the process
  (token bucket: ``rate_per_s`` sustained, ``burst`` at once), retries included.
- One retry loop per fetch (``RetryPolicy``): at most ``max_attempts`` requests, with
  exponential backoff and full jitter (``uniform(0, min(max, base * 2**n))``) between them.
  Retried: 429 (waiting at least its ``Retry-After``), 408, 425, 5xx, timeouts (the whole
  request within ``timeout_s``, a dripping body included), refused/reset connections,
  truncated or undecodable gzip/deflate bodies, bodies over ``max_body_bytes`` as sent or
  decompressed (``oversized``: a gzip bomb costs that much memory, no more; ``http_body``),
  other Content-Encodings (``encoding``), empty 200 bodies, and
  bodies the caller's ``refuse`` judges unusable (``fetch_day(..., refuse=...)``: the
  downloader refuses what is not candle JSON at all). Each failed attempt is a
  ``TransientSourceError`` (``status``, ``retry_after_s``); after ``max_attempts`` the fetch
  raises one naming the last reason.
- Not retried: 404 and days before the symbol's configured history start raise ``NotFound``
  (the latter without a request); any other 4xx raises ``SourceError``; a host name that
  does not resolve (DNS) raises ``HostUnresolved`` after its one request — every retry would
  fail alike (a refused connection is retried: the fake upstream may start after us).
- Every error names symbol, side, day and URL; every failed attempt's kind goes to
  ``on_failure`` (the downloader's ``barstream_fetch_attempt_failures_total``). A refused
  body is never returned, so never cached. A 200 body is returned as received (decoded);
  judging its candles is the transformer's job.
- ``body_digest`` = the first 8 bytes of ``blake2b(body)`` as a little-endian uint64, the value
  of ``JOURNAL_DTYPE['digest']``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import http.client
import random
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol, TypedDict

from barstream.services.downloader.budget import RequestBudget, RetryPolicy
from barstream.services.downloader.http_body import (
    DEFAULT_MAX_BODY_BYTES,
    BodyRefused,
    Deadline,
    decode_body,
    read_body,
)
from barstream.services.downloader.http_pool import (
    ConnectionPool,
    http_date_ms,
    origin_of,
    printable,
    retry_after_s,
    status_error,
)
from barstream.shared.config import DownloaderConfig
from barstream.shared.errors import (
    HostUnresolved,
    NotFound,
    TransientSourceError,
)
from barstream.shared.timeframe import DAY_MS

__all__ = [
    "DEFAULT_BASE_URL",
    "SIDES",
    "USER_AGENT",
    "FetchResult",
    "HttpSource",
    "Refuse",
    "RequestBudget",
    "RetryPolicy",
    "Source",
    "SourceSettings",
    "body_digest",
    "day_start_ms",
    "day_url",
    "instrument_url",
    "live_url",
    "utc_today",
]

DEFAULT_BASE_URL: Final = "https://jetta.dukascopy.com"
USER_AGENT: Final = "barstream/0.1 (+https://github.com/barstream)"
SIDES: Final = ("BID", "ASK")
_EPOCH: Final = dt.date(1970, 1, 1)


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One completed fetch: the (gunzipped) body and how it was obtained."""

    symbol: str
    side: str
    day: dt.date
    url: str
    body: bytes
    status: int
    attempts: int
    elapsed_s: float
    live: bool
    #: The upstream's clock (HTTP ``Date``) when it answered; the downloader follows it so
    #: that "today" is the upstream's today (the demo's fake runs a simulated clock).
    server_ms: int | None = None

    @property
    def digest(self) -> int:
        return body_digest(self.body)


#: Judges a response before a fetch takes it: None to take it, else why not (the attempt
#: then counts as failed and is retried within the same ``max_attempts``).
Refuse = Callable[[FetchResult], str | None]


class Source(Protocol):
    """What the downloader service needs from an upstream of day responses."""

    async def fetch_day(
        self, symbol: str, side: str, day: dt.date, *, refuse: Refuse | None = None
    ) -> FetchResult: ...

    async def fetch_live(self, symbol: str, side: str, day: dt.date) -> FetchResult: ...


@dataclass(frozen=True, slots=True)
class SourceSettings:
    base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: First day with data per symbol; earlier days raise NotFound without a request.
    history_start: Mapping[str, dt.date] = field(default_factory=dict)
    user_agent: str = USER_AGENT
    gzip: bool = True
    #: The most bytes one response body may have, as sent and decompressed (``http_body``).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES


def day_start_ms(day: dt.date) -> int:
    """UTC midnight of ``day`` in ms since the epoch."""
    return (day - _EPOCH).days * DAY_MS


def day_url(base_url: str, symbol: str, side: str, day: dt.date) -> str:
    return f"{_candles_base(base_url, symbol, side)}/{day.year}/{day.month}/{day.day}"


def instrument_url(base_url: str, code: str) -> str:
    """The instrument metadata document of ``code`` (``histories``: its first candles)."""
    if not code or "/" in code:
        raise ValueError(f"symbol = {code!r}: not a Dukascopy instrument code like EUR-USD")
    return f"{base_url.rstrip('/')}/v1/instruments/{urllib.parse.quote(code, safe='-.')}"


def live_url(base_url: str, symbol: str, side: str, day: dt.date) -> str:
    return f"{_candles_base(base_url, symbol, side)}?from={day_start_ms(day)}"


def body_digest(body: bytes) -> int:
    """First 8 bytes of blake2b(body), little-endian — ``JOURNAL_DTYPE['digest']``."""
    return int.from_bytes(hashlib.blake2b(body).digest()[:8], "little")


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _candles_base(base_url: str, symbol: str, side: str) -> str:
    if side not in SIDES:
        raise ValueError(f"side = {side!r}: must be one of {SIDES}")
    if not symbol or "/" in symbol:
        raise ValueError(f"symbol = {symbol!r}: not a Dukascopy instrument code like EUR-USD")
    quoted = urllib.parse.quote(symbol, safe="-.")
    return f"{base_url.rstrip('/')}/v1/candles/minute/{quoted}/{side}"


class _Where(TypedDict):
    """What every error of one fetch names."""

    symbol: str
    side: str
    day: str
    url: str


class HttpSource:
    """The real client: ``http.client`` in worker threads over keep-alive connections
    (``http_pool``), one shared budget, one retry loop (``RetryPolicy``) around every
    request of a fetch."""

    def __init__(
        self,
        settings: SourceSettings,
        budget: RequestBudget,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._pool = ConnectionPool()
        self.attempts_total = 0
        self.retries_total = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        #: Called with the kind of every failed attempt (``oversized``, ``timeout``, …: the
        #: reason's first word); the downloader counts them in its metrics.
        self.on_failure: Callable[[str], None] | None = None

    @classmethod
    def from_config(cls, d: DownloaderConfig, budget: RequestBudget) -> HttpSource:
        """The client as ``downloader.*`` configures it: ``max_retries + 1`` requests a fetch."""
        retry = RetryPolicy(max_attempts=d.max_retries + 1)
        settings = SourceSettings(
            base_url=d.base_url,
            timeout_s=d.timeout_s,
            retry=retry,
            history_start=dict(d.history_start),
            max_body_bytes=d.max_body_bytes,
        )
        return cls(settings, budget)

    async def fetch_day(
        self, symbol: str, side: str, day: dt.date, *, refuse: Refuse | None = None
    ) -> FetchResult:
        url = day_url(self.settings.base_url, symbol, side, day)
        return await self._fetch(symbol, side, day, url, live=False, refuse=refuse)

    async def fetch_live(self, symbol: str, side: str, day: dt.date) -> FetchResult:
        url = live_url(self.settings.base_url, symbol, side, day)
        return await self._fetch(symbol, side, day, url, live=True)

    async def fetch_instrument(self, code: str) -> FetchResult:
        """The instrument's metadata document (``instrument_url``; ``instruments``), with
        the budget and retries of a day (its ``side`` is ``META``, its ``day`` today)."""
        url = instrument_url(self.settings.base_url, code)
        return await self._fetch(code, "META", utc_today(), url, live=True, meta=True)

    @property
    def connections_opened(self) -> int:
        """TCP connections made so far (each carries many requests: ``http_pool``)."""
        return self._pool.opened_total

    def close(self) -> None:
        """Close the idle connections (a later request opens new ones)."""
        self._pool.close()

    def __repr__(self) -> str:
        return (
            f"<HttpSource {self.settings.base_url} attempts={self.attempts_total} "
            f"retries={self.retries_total} statuses={dict(self.statuses)}>"
        )

    async def _fetch(
        self,
        symbol: str,
        side: str,
        day: dt.date,
        url: str,
        *,
        live: bool,
        refuse: Refuse | None = None,
        meta: bool = False,
    ) -> FetchResult:
        where = _Where(symbol=symbol, side=side, day=day.isoformat(), url=url)
        start = None if meta else self.settings.history_start.get(symbol)
        if start is not None and day < start:
            raise NotFound(f"before the history start {start.isoformat()} of {symbol}", **where)
        policy = self.settings.retry
        began = time.monotonic()
        last = "no attempt"
        last_status = 0
        for attempt in range(1, policy.max_attempts + 1):
            await self.budget.acquire()
            self.attempts_total += 1
            try:
                status, body, server_ms = await self._attempt(where)
                result = FetchResult(
                    symbol,
                    side,
                    day,
                    url,
                    body,
                    status,
                    attempt,
                    time.monotonic() - began,
                    live,
                    server_ms,
                )
                why = refuse(result) if refuse is not None else None
                if why is None:
                    return result
                raise TransientSourceError(f"refused: {why}", **where)
            except TransientSourceError as retry:
                last, last_status = retry.reason, retry.status
                kind = retry.reason.split(":")[0]
                self.failures[kind] += 1
                if self.on_failure is not None:
                    self.on_failure(kind)
                if attempt == policy.max_attempts:
                    break
                self.retries_total += 1
                await self._sleep(policy.delay_s(attempt, self._rng, retry.retry_after_s))
        raise TransientSourceError(
            f"gave up after {policy.max_attempts} attempts; last: {last}"
            + (f" (HTTP {last_status})" if last_status else ""),
            status=last_status,
            **where,
        )

    async def _attempt(self, where: _Where) -> tuple[int, bytes, int | None]:
        timeout_s = self.settings.timeout_s
        try:
            # A backstop only: the request's own Deadline ends the thread's wait first.
            async with asyncio.timeout(timeout_s + 1.0):
                status, body, server_ms = await asyncio.to_thread(self._get, where, timeout_s)
        except TimeoutError:
            raise self._timed_out(where, timeout_s) from None
        self.statuses[status] += 1
        return status, body, server_ms

    def _get(self, where: _Where, timeout_s: float) -> tuple[int, bytes, int | None]:
        """One blocking GET (runs in a worker thread) on a keep-alive connection of the pool
        (``http_pool``), bounded in time (``Deadline``: the whole request in ``timeout_s``)
        and in bytes (``max_body_bytes``, before and after decompression: ``http_body``). A
        failed attempt worth another raises ``TransientSourceError``; 404 ``NotFound``, any
        other 4xx (or a 3xx: redirects are not followed) ``SourceError`` (each with the
        response's ``Date`` as ``server_ms``); a host that does not resolve
        ``HostUnresolved``. The connection goes back to the pool only after a complete
        response that leaves it open; any error or expired deadline closes it."""
        headers = {"User-Agent": self.settings.user_agent, "Accept": "application/json"}
        if self.settings.gzip:
            headers["Accept-Encoding"] = "gzip"
        origin, target = origin_of(where["url"])
        limit = self.settings.max_body_bytes
        status = 0
        keep = False
        with Deadline(timeout_s) as deadline:
            conn = self._pool.take(origin, timeout_s)
            try:
                conn.request("GET", target, headers=headers)
                response = conn.getresponse()
                status = int(response.status)
                encoding = response.getheader("Content-Encoding", "") or ""
                server_ms = http_date_ms(response.getheader("Date"))
                retry_after = retry_after_s(response.getheader("Retry-After"))
                raw = read_body(response, limit)
                if deadline.expired:  # a body sent until close, cut by the deadline
                    raise TimeoutError("deadline")
                keep = not response.will_close and response.isclosed()
                self.statuses[status] += 1
                if status >= 300:
                    raise status_error(status, response.reason, retry_after, server_ms, **where)
                body = decode_body(raw, encoding, limit)
            except BodyRefused as exc:
                keep = False
                if deadline.expired:
                    raise self._timed_out(where, timeout_s) from None
                raise TransientSourceError(str(exc), status=status, **where) from None
            except http.client.IncompleteRead as exc:
                keep = False
                if deadline.expired:
                    raise self._timed_out(where, timeout_s) from None
                raise TransientSourceError(
                    f"truncated: body ended after {len(exc.partial)} bytes", **where
                ) from None
            except (TimeoutError, OSError, http.client.HTTPException, ValueError) as exc:
                # ValueError: http.client on a garbled status line or chunk size
                keep = False
                if isinstance(exc, socket.gaierror):  # the next request would fail alike
                    host = origin[1]
                    raise HostUnresolved(
                        f"dns: host {host!r} does not resolve: {exc}", **where
                    ) from None
                if deadline.expired or isinstance(exc, TimeoutError):
                    raise self._timed_out(where, timeout_s) from None
                raise TransientSourceError(
                    f"connection: {type(exc).__name__}: {printable(str(exc))}", **where
                ) from None
            finally:
                if not keep:
                    self._pool.discard(conn)
        if keep and not deadline.expired:
            self._pool.give_back(origin, conn)
        else:
            self._pool.discard(conn)
        if not body:
            raise TransientSourceError("empty: HTTP 200 with an empty body", status=status, **where)
        return status, body, server_ms

    @staticmethod
    def _timed_out(where: _Where, timeout_s: float) -> TransientSourceError:
        return TransientSourceError(
            f"timeout: no complete response in {timeout_s:g} s (downloader.timeout_s)", **where
        )
