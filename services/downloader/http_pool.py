"""Keep-alive HTTP/1.1 connections for the downloader: one TCP (or TLS) connection carries
many requests instead of one connection per request.

- ``ConnectionPool.take(url)`` gives an idle connection to the URL's origin (scheme, host,
  port) or a new one (connected lazily by its first request, so a ``Deadline`` of the
  thread watches the socket from the connect on: ``http_body``); ``give_back`` keeps it for
  the next request, at most ``max_idle`` per origin (the rest are closed).
- A connection goes back only after a complete response that keeps it open: its body read
  to the end (``Content-Length`` or the last chunk), no ``Connection: close``, no deadline
  expired, no error. Anything else closes it (``discard``): a half-read or suspicious
  connection is never reused.
- An idle connection the peer closed meanwhile (the server's idle timeout) is seen before
  reuse — its socket is readable (EOF) while no request is pending — and replaced by a new
  one, so a request never goes out on a dead connection knowingly. A close racing with the
  request is a failed attempt like any reset (the source retries it within its policy).
- ``opened_total`` counts the connections made (the backfill test compares it with the
  requests sent).

Why ``http.client`` and not httpx: the hardening of ``http_body`` (``Deadline`` shutting
the socket down mid-read, ``read_body`` counting bytes as sent before any decoding) works
on ``http.client.HTTPResponse`` as it is, and the Dukascopy API is HTTP/1.1 with
keep-alive; a second HTTP stack would need the same defences rebuilt and re-proven.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import http.client
import select
import ssl
import threading
import time
import urllib.parse
from collections import defaultdict
from typing import Final

from barstream.services.downloader.http_body import Deadline
from barstream.shared.errors import NotFound, SourceError, TransientSourceError

__all__ = [
    "ConnectionPool",
    "Origin",
    "http_date_ms",
    "origin_of",
    "printable",
    "retry_after_s",
    "status_error",
]

#: (scheme, host, port) of a URL.
Origin = tuple[str, str, int]
#: Statuses worth another try besides 5xx.
RETRY_STATUSES: Final = frozenset({408, 425, 429})
#: Idle connections kept per origin (the backfill runs 8 fetches at once).
MAX_IDLE: Final = 16


def origin_of(url: str) -> tuple[Origin, str]:
    """The origin of ``url`` and its request target (path and query)."""
    split = urllib.parse.urlsplit(url)
    scheme = split.scheme.lower()
    if scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"{url!r}: not an http(s) URL")
    port = split.port or (443 if scheme == "https" else 80)
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    return (scheme, split.hostname, port), target


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        Deadline.watch_current(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        Deadline.watch_current(self.sock)


class ConnectionPool:
    """Idle keep-alive connections per origin; thread-safe (fetches run in worker threads)."""

    def __init__(self, max_idle: int = MAX_IDLE) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: defaultdict[Origin, list[http.client.HTTPConnection]] = defaultdict(list)
        self._tls = ssl.create_default_context()
        self.opened_total = 0
        self.reused_total = 0

    def take(self, origin: Origin, timeout_s: float) -> http.client.HTTPConnection:
        """An idle live connection to ``origin`` (watched by the thread's ``Deadline``), else
        a new, not yet connected one."""
        while True:
            with self._lock:
                idle = self._idle[origin]
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if conn.sock is not None and not _dropped(conn):
                conn.timeout = timeout_s
                conn.sock.settimeout(timeout_s)
                Deadline.watch_current(conn.sock)
                with self._lock:
                    self.reused_total += 1
                return conn
            conn.close()
        scheme, host, port = origin
        with self._lock:
            self.opened_total += 1
        if scheme == "https":
            return _HTTPSConnection(host, port, timeout=timeout_s, context=self._tls)
        return _HTTPConnection(host, port, timeout=timeout_s)

    def give_back(self, origin: Origin, conn: http.client.HTTPConnection) -> None:
        """Keep ``conn`` for the next request (its response complete and read to the end)."""
        with self._lock:
            idle = self._idle[origin]
            if len(idle) < self.max_idle and conn.sock is not None:
                idle.append(conn)
                return
        conn.close()

    @staticmethod
    def discard(conn: http.client.HTTPConnection) -> None:
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for conn in conns:
            conn.close()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is unusable: readable while no request is pending means
    the peer closed it (EOF) or sent something unasked for; either way, not reused."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def http_date_ms(value: str | None) -> int | None:
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


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    when_ms = http_date_ms(value)
    return None if when_ms is None else max(when_ms / 1000 - time.time(), 0.0)


def status_error(
    status: int,
    phrase: str,
    retry_after: float | None,
    server_ms: int | None,
    *,
    symbol: str,
    side: str,
    day: str,
    url: str,
) -> SourceError:
    """The error of a non-2xx answer: 5xx and ``RETRY_STATUSES`` transient (with their
    ``Retry-After``), 404 ``NotFound``, the rest ``SourceError``; ``server_ms`` is the
    upstream's clock (its ``Date``)."""
    if status >= 500 or status in RETRY_STATUSES:
        return TransientSourceError(
            f"http: HTTP {status}",
            status=status,
            retry_after_s=retry_after,
            symbol=symbol,
            side=side,
            day=day,
            url=url,
        )
    err = (
        NotFound("HTTP 404: no such instrument or day", symbol=symbol, side=side, day=day, url=url)
        if status == 404
        else SourceError(
            f"HTTP {status}: {printable(phrase)}", symbol=symbol, side=side, day=day, url=url
        )
    )
    err.server_ms = server_ms
    return err


def printable(text: str, limit: int = 200) -> str:
    """``text`` as it may go into a log line: a peer's garbage (a bad status line) quoted
    and cut, never raw bytes or line breaks."""
    text = text.strip()
    return text if text.isprintable() and len(text) <= limit else repr(text[:limit])
