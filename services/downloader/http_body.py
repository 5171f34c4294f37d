"""Bounded HTTP bodies: every response the downloader reads is limited in bytes and in time.

A day of minute candles is well under 1 MB; a hostile or broken upstream can answer with a
body of gigabytes, a small gzip body that inflates to gigabytes (a "gzip bomb"), or a body
that drips one byte at a time. None of these may cost more than ``limit`` bytes of memory or
more than the request's ``timeout_s``:

- ``read_body``: the body as sent (``Content-Length`` or chunked or until close), refused as
  soon as it passes ``limit`` bytes (a ``Content-Length`` above it before a byte is read), and
  refused as truncated when it ends before its ``Content-Length``.
- ``decode_body``: ``Content-Encoding`` undone (``gzip``/``x-gzip`` with every member,
  ``deflate`` zlib-wrapped or raw, ``identity``; a list is undone right to left) by streaming
  decompression that stops at ``limit`` bytes of output: a bomb costs ``limit`` bytes, not
  what it inflates to. Any other coding (``br``, ``zstd``, …: the request asks for gzip only)
  is refused, never passed on as a body.
- ``Deadline``: the whole request (connect, headers, body) within ``timeout_s``: a timer shuts
  the socket down when the time is up, so a blocked read wakes at once (each read also has
  the socket timeout). ``connections()`` are the HTTP/HTTPS handlers that arm it.

Each refusal is a ``BodyRefused`` with ``kind`` (``oversized``, ``truncated``, ``encoding``):
the source turns it into a ``TransientSourceError`` that names symbol, side, day and URL.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import urllib.request
import zlib
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "BodyRefused",
    "Deadline",
    "connections",
    "decode_body",
    "oversized_hint",
    "read_body",
]

#: The default of ``downloader.max_body_bytes``: 16 MiB, some twenty times a day of candles.
DEFAULT_MAX_BODY_BYTES: Final = 16 << 20
#: Bytes asked of the socket (or given to the decompressor) per step.
_CHUNK: Final = 1 << 16
_GZIP_MAGIC: Final = b"\x1f\x8b"


class BodyRefused(Exception):
    """A body that is not taken; ``kind`` is ``oversized``, ``truncated`` or ``encoding``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(f"{kind}: {message}")


def oversized_hint(limit: int) -> str:
    """What an oversized refusal tells the operator to do."""
    return (
        f"downloader.max_body_bytes = {limit} bytes; a day of minute candles is well "
        "under 1 MB: check that downloader.base_url is the candle API (not a proxy or another "
        "service), or raise downloader.max_body_bytes if the upstream really sends more"
    )


def read_body(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The body of ``response`` as sent, at most ``limit`` bytes (``BodyRefused`` if more, or
    if it ends before its Content-Length)."""
    declared = response.length  # Content-Length (None: chunked or until close)
    if declared is not None and declared > limit:
        raise BodyRefused("oversized", f"Content-Length {declared} exceeds {oversized_hint(limit)}")
    chunks: list[bytes] = []
    got = 0
    while True:
        chunk = response.read(min(_CHUNK, limit + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if got > limit:
            raise BodyRefused("oversized", f"the body sent exceeds {oversized_hint(limit)}")
    if declared is not None and got < declared:
        raise BodyRefused("truncated", f"body ended after {got} of its {declared} bytes")
    return b"".join(chunks)


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """``raw`` with its Content-Encoding undone, at most ``limit`` bytes of output."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    body = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _gunzip(body, limit, coding)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit, coding)
            except BodyRefused as e:  # some servers send raw deflate, without the zlib wrap
                if e.kind != "truncated" or not body:
                    raise
                body = _inflate(body, -zlib.MAX_WBITS, limit, coding)
        else:
            raise BodyRefused(
                "encoding", f"Content-Encoding {coding!r} is not supported (gzip was asked for)"
            )
    return body


def _gunzip(data: bytes, limit: int, coding: str) -> bytes:
    """Every gzip member of ``data`` (as ``gzip.decompress``), at most ``limit`` bytes."""
    out = bytearray()
    rest = data
    while True:
        room = limit - len(out)
        member, rest = _inflate_member(rest, 16 + zlib.MAX_WBITS, room, limit, coding)
        out += member
        if not rest:
            return bytes(out)
        if not rest.startswith(_GZIP_MAGIC):
            raise BodyRefused("truncated", f"{len(rest)} bytes after the gzip data do not decode")


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    out, rest = _inflate_member(data, wbits, limit, limit, coding)
    if rest:
        raise BodyRefused("truncated", f"{len(rest)} bytes after the {coding} data")
    return out


def _inflate_member(
    data: bytes, wbits: int, room: int, limit: int, coding: str
) -> tuple[bytes, bytes]:
    """One compressed stream from the start of ``data``: (its output, the bytes after it);
    ``BodyRefused`` once the output passes ``room`` bytes (of the body's ``limit``)."""
    d = zlib.decompressobj(wbits)
    out = bytearray()
    pending = data
    try:
        while not d.eof:
            chunk = d.decompress(pending, min(_CHUNK * 16, room + 1 - len(out)))
            out += chunk
            if len(out) > room:
                raise BodyRefused(
                    "oversized",
                    f"a {coding} body of {len(data)} bytes inflates past " + oversized_hint(limit),
                )
            pending = d.unconsumed_tail
            if not chunk and not pending:
                break  # input used up, no output left: the stream is cut short
    except zlib.error as e:
        raise BodyRefused("truncated", f"{coding} body does not decode ({e})") from None
    if not d.eof:
        raise BodyRefused("truncated", f"{coding} body ends before its end (cut off)")
    return bytes(out), d.unused_data


class Deadline:
    """The time one request has (connect, headers and body): when it is up, the socket the
    request uses is shut down, so a read blocked on a dripping or silent peer returns at
    once. ``expired`` says it happened. A context manager around one blocking request, in
    the thread that makes it; the connections of ``connections()`` find it there."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        Deadline._current.active = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        Deadline._current.active = None
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    @classmethod
    def watch_current(cls, sock: socket.socket) -> None:
        """Let the current thread's deadline (if any) shut ``sock`` down when it is up."""
        deadline: Deadline | None = getattr(cls._current, "active", None)
        if deadline is not None:
            deadline.watch(sock)

    def watch(self, sock: socket.socket) -> None:
        # A duplicate of the descriptor: shutdown() acts on the connection, whichever
        # descriptor names it, and stays valid when TLS wraps (detaches) the original.
        dup = socket.socket(fileno=os.dup(sock.fileno()))
        with self._lock:
            old, self._sock = self._sock, dup
            expired = self.expired
        if old is not None:
            old.close()
        if expired:
            self._shutdown(dup)

    def _fire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._sock
        if sock is not None:
            self._shutdown(sock)

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.shutdown(socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        super().connect()
        Deadline.watch_current(self.sock)


class _HTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        Deadline.watch_current(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def do_open(self, http_class: Any, req: urllib.request.Request, **kw: Any) -> Any:
        return super().do_open(_HTTPConnection, req, **kw)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def do_open(self, http_class: Any, req: urllib.request.Request, **kw: Any) -> Any:
        return super().do_open(_HTTPSConnection, req, **kw)


def connections() -> list[urllib.request.BaseHandler]:
    """urllib handlers (for ``build_opener``) whose connections a ``Deadline`` watches."""
    return [_HTTPHandler(), _HTTPSHandler()]
