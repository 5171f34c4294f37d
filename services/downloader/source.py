"""The Dukascopy JSON API client, its request budget and the raw cache — the downloader's edge.

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
- Retried, with exponential backoff and full jitter (``uniform(0, min(max, base * 2**n))``):
  429 (waiting at least its ``Retry-After``), 408, 425, 5xx, timeouts, refused/reset
  connections, truncated or undecodable gzip bodies and empty 200 bodies. After
  ``max_attempts`` the fetch raises ``TransientSourceError``.
- Not retried: 404 and days before the symbol's configured history start raise ``NotFound``
  (the latter without a request); any other 4xx raises ``SourceError``.
- Every error names symbol, side, day and URL. A 200 body is returned as received (gunzipped);
  judging its content is the transformer's job.
- ``RawCache`` keeps final day bodies at
  ``{root}/{SYMBOL}/{SIDE}/{YYYY}/{SYMBOL}-{SIDE}-{YYYYMMDD}.json``, written atomically
  (tmp, fsync, rename, fsync dir). It refuses the current (or a future) day: a live day is
  never cached as final.
- ``body_digest`` = the first 8 bytes of ``blake2b(body)`` as a little-endian uint64, the value
  of ``JOURNAL_DTYPE['digest']``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import gzip
import hashlib
import http.client
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from barstream.shared import fsio
from barstream.shared.errors import NotFound, SourceError, TransientSourceError
from barstream.shared.timeframe import DAY_MS

__all__ = [
    "DEFAULT_BASE_URL",
    "SIDES",
    "USER_AGENT",
    "FetchResult",
    "HttpSource",
    "RawCache",
    "RequestBudget",
    "RetryPolicy",
    "Source",
    "SourceSettings",
    "body_digest",
    "day_start_ms",
    "day_url",
    "live_url",
    "utc_today",
]

DEFAULT_BASE_URL: Final = "https://jetta.dukascopy.com"
USER_AGENT: Final = "barstream/0.1 (+https://github.com/barstream)"
SIDES: Final = ("BID", "ASK")
#: Statuses worth another try besides 5xx.
RETRY_STATUSES: Final = frozenset({408, 425, 429})
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


class Source(Protocol):
    """What the downloader service needs from an upstream of day responses."""

    async def fetch_day(self, symbol: str, side: str, day: dt.date) -> FetchResult: ...

    async def fetch_live(self, symbol: str, side: str, day: dt.date) -> FetchResult: ...


class RequestBudget:
    """A token bucket shared by every request of the process: ``rate_per_s`` sustained,
    ``burst`` back to back. Waiters are served in arrival order."""

    def __init__(
        self, rate_per_s: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s = {rate_per_s!r}: must be > 0")
        if burst < 1:
            raise ValueError(f"burst = {burst!r}: must be >= 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()
        self.requests_total = 0
        self.waits_total = 0
        self.wait_seconds_total = 0.0

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns the seconds waited."""
        async with self._lock:
            self._refill()
            waited = 0.0
            if self._tokens < 1.0:
                waited = (1.0 - self._tokens) / self.rate_per_s
                self.waits_total += 1
                self.wait_seconds_total += waited
                await asyncio.sleep(waited)
                self._refill()
            self._tokens = max(self._tokens - 1.0, 0.0)
            self.requests_total += 1
            return waited

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def __repr__(self) -> str:
        return (
            f"<RequestBudget rate_per_s={self.rate_per_s:g} burst={self.burst} "
            f"requests={self.requests_total} waits={self.waits_total} "
            f"wait_s={self.wait_seconds_total:.3f}>"
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff with full jitter; ``Retry-After`` is a floor, capped at ``max_retry_after_s``."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay_s(self, retry: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        delay = rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1)))
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay


@dataclass(frozen=True, slots=True)
class SourceSettings:
    base_url: str = DEFAULT_BASE_URL
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: First day with data per symbol; earlier days raise NotFound without a request.
    history_start: Mapping[str, dt.date] = field(default_factory=dict)
    user_agent: str = USER_AGENT
    gzip: bool = True


def day_start_ms(day: dt.date) -> int:
    """UTC midnight of ``day`` in ms since the epoch."""
    return (day - _EPOCH).days * DAY_MS


def day_url(base_url: str, symbol: str, side: str, day: dt.date) -> str:
    return f"{_candles_base(base_url, symbol, side)}/{day.year}/{day.month}/{day.day}"


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


class _Retry(Exception):
    """One failed attempt that deserves another (internal)."""

    def __init__(self, reason: str, status: int = 0, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after_s = retry_after_s


class HttpSource:
    """The real client: standard-library HTTP in worker threads, one shared budget."""

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
        self._opener = urllib.request.build_opener()
        self.attempts_total = 0
        self.retries_total = 0
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()

    async def fetch_day(self, symbol: str, side: str, day: dt.date) -> FetchResult:
        url = day_url(self.settings.base_url, symbol, side, day)
        return await self._fetch(symbol, side, day, url, live=False)

    async def fetch_live(self, symbol: str, side: str, day: dt.date) -> FetchResult:
        url = live_url(self.settings.base_url, symbol, side, day)
        return await self._fetch(symbol, side, day, url, live=True)

    def __repr__(self) -> str:
        return (
            f"<HttpSource {self.settings.base_url} attempts={self.attempts_total} "
            f"retries={self.retries_total} statuses={dict(self.statuses)}>"
        )

    async def _fetch(
        self, symbol: str, side: str, day: dt.date, url: str, *, live: bool
    ) -> FetchResult:
        where = {"symbol": symbol, "side": side, "day": day.isoformat(), "url": url}
        start = self.settings.history_start.get(symbol)
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
                status, body, server_ms = await self._attempt(url)
            except _Retry as retry:
                last, last_status = retry.reason, retry.status
                self.failures[retry.reason.split(":")[0]] += 1
                if attempt == policy.max_attempts:
                    break
                self.retries_total += 1
                await self._sleep(policy.delay_s(attempt, self._rng, retry.retry_after_s))
                continue
            except _Permanent as exc:
                err = (
                    NotFound("HTTP 404: no such instrument or day", **where)
                    if exc.status == 404
                    else SourceError(f"HTTP {exc.status}: {exc.reason}", **where)
                )
                err.server_ms = exc.server_ms
                raise err from None
            return FetchResult(
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
        raise TransientSourceError(
            f"gave up after {policy.max_attempts} attempts; last: {last}"
            + (f" (HTTP {last_status})" if last_status else ""),
            **where,
        )

    async def _attempt(self, url: str) -> tuple[int, bytes, int | None]:
        timeout_s = self.settings.timeout_s
        try:
            async with asyncio.timeout(timeout_s + 1.0):
                status, body, server_ms = await asyncio.to_thread(self._get, url, timeout_s)
        except TimeoutError:
            raise _Retry(f"timeout: no complete response in {timeout_s:g} s") from None
        self.statuses[status] += 1
        return status, body, server_ms

    def _get(self, url: str, timeout_s: float) -> tuple[int, bytes, int | None]:
        """One blocking GET (runs in a worker thread). Raises _Retry or _Permanent."""
        headers = {"User-Agent": self.settings.user_agent, "Accept": "application/json"}
        if self.settings.gzip:
            headers["Accept-Encoding"] = "gzip"
        request = urllib.request.Request(url, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout_s) as response:
                status = int(response.status)
                raw = response.read()
                encoding = response.headers.get("Content-Encoding", "")
                server_ms = _http_date_ms(response.headers.get("Date"))
        except urllib.error.HTTPError as exc:
            self.statuses[exc.code] += 1
            with exc:
                retry_after = _retry_after_s(exc.headers.get("Retry-After"))
            if exc.code >= 500 or exc.code in RETRY_STATUSES:
                raise _Retry(f"http: HTTP {exc.code}", exc.code, retry_after) from None
            raise _Permanent(
                exc.code, str(exc.reason), _http_date_ms(exc.headers.get("Date"))
            ) from None
        except http.client.IncompleteRead as exc:
            raise _Retry(f"truncated: body ended after {len(exc.partial)} bytes") from None
        except (TimeoutError, OSError, http.client.HTTPException, urllib.error.URLError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            kind = "timeout" if isinstance(reason, TimeoutError) else "connection"
            raise _Retry(f"{kind}: {type(reason).__name__}: {reason}") from None
        if "gzip" in encoding.lower():
            try:
                raw = gzip.decompress(raw)
            except (EOFError, OSError, zlib.error) as exc:
                raise _Retry(f"truncated: gzip body does not decode ({exc})") from None
        if not raw:
            raise _Retry("empty: HTTP 200 with an empty body", status)
        return status, raw, server_ms


class _Permanent(Exception):
    def __init__(self, status: int, reason: str, server_ms: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.server_ms = server_ms  # the error response's Date: the upstream's clock


def _http_date_ms(value: str | None) -> int | None:
    """An HTTP ``Date`` header as ms since the epoch (None if absent or unparsable)."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


# --- the raw cache ------------------------------------------------------------------------------


class RawCache:
    """Final day responses on disk, one file per (symbol, side, day); see the module docstring."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        today: Callable[[], dt.date] = utc_today,
        durable: bool = True,
    ) -> None:
        self.root = Path(root)
        self._today = today
        self._durable = durable

    def path(self, symbol: str, side: str, day: dt.date) -> Path:
        if side not in SIDES or not symbol or "/" in symbol or symbol.startswith("."):
            raise ValueError(f"not a cacheable symbol/side: {symbol!r}/{side!r}")
        name = f"{symbol}-{side}-{day:%Y%m%d}.json"
        return self.root / symbol / side / f"{day:%Y}" / name

    def has(self, symbol: str, side: str, day: dt.date) -> bool:
        return self.path(symbol, side, day).is_file()

    def get(self, symbol: str, side: str, day: dt.date) -> bytes | None:
        try:
            return self.path(symbol, side, day).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, symbol: str, side: str, day: dt.date, body: bytes) -> int:
        """Store a final day's body atomically; returns its digest. Refuses today and later."""
        today = self._today()
        if day >= today:
            raise ValueError(
                f"{symbol}/{side}/{day.isoformat()}: not final (today is {today.isoformat()}); "
                "the current day is never cached"
            )
        fsio.atomic_write(self.path(symbol, side, day), body, durable=self._durable)
        return body_digest(body)

    def put_result(self, result: FetchResult) -> int:
        if result.live:
            raise ValueError(f"{result.url}: a live response is never cached as final")
        return self.put(result.symbol, result.side, result.day, result.body)

    def days(self, symbol: str, side: str) -> Iterator[dt.date]:
        """Cached days of one symbol/side in date order."""
        base = self.root / symbol / side
        if not base.is_dir():
            return
        prefix = f"{symbol}-{side}-"
        for year in sorted(p for p in base.iterdir() if p.is_dir() and p.name.isdigit()):
            for f in sorted(year.glob(f"{prefix}????????.json")):
                stamp = f.name[len(prefix) : -len(".json")]
                try:
                    yield dt.datetime.strptime(stamp, "%Y%m%d").date()
                except ValueError:
                    continue
