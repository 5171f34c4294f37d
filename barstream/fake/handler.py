"""The fake upstream over HTTP/1.1: one request handler class bound to a FakeUpstream.

GET of a data URL: count the User-Agent, let the first matching fault fire (``slow`` then
answers normally; every other kind answers in its place, see ``faults``), else answer
``FakeUpstream.reply``; a bug in the fake answers 500 with the exception, never kills the
thread silently. ``/_control/…`` (GET, POST, DELETE; JSON in and out) goes to
``FakeUpstream.control``; a bad payload answers 400.

Every answer carries Content-Type and Content-Length; a data answer is gzipped (level 5,
mtime 0, so bytes replay) when the request accepts gzip, control answers never are. The
``Date`` header tells the *simulated* time (the downloader follows it). A client that hangs
up mid-answer is not an error. No access log.

One write per answer: status line, headers and body leave in one buffer (``http.server``'s
own ``send_response``/``end_headers`` then ``wfile.write`` is two writes, and with a
keep-alive client Nagle's algorithm and the client's delayed ACK make each answer wait
≈ 40 ms). The socket also has TCP_NODELAY, for the answers ``http.server`` writes itself
(``send_error``).
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import json
import socket
import struct
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from barstream.fake.faults import HTML_PAGE, Fault, corrupt_candles

if TYPE_CHECKING:
    from barstream.fake.upstream import FakeUpstream


@dataclass(slots=True)
class Reply:
    """One HTTP answer before gzip: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def make_handler(upstream: FakeUpstream) -> type[BaseHTTPRequestHandler]:
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
            route = (
                "instrument"
                if self.path.startswith("/v1/instruments/")
                else "live"
                if "?" in self.path
                else "day"
            )
            upstream.count_path(self.path)
            upstream.count_user_agent(self.headers.get("User-Agent", ""))
            fault = upstream.faults.pick(self.path)
            if fault is not None:
                upstream.fired(fault.kind)
                if fault.kind == "slow":
                    time.sleep(fault.delay_s)
                else:
                    self._fault(fault, route)
                    return
            try:
                reply = upstream.reply(self.path)
            except Exception as exc:  # a bug in the fake must not kill the thread silently
                reply = Reply(500, json.dumps({"error": repr(exc)}).encode())
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
                reply = Reply(400, json.dumps({"error": str(exc)}).encode())
            upstream.count("control")
            self._send(reply, allow_gzip=False)

        def _fault(self, fault: Fault, route: str) -> None:
            """Misbehave as ``fault`` says. The request is counted (with the status it gets,
            0 = none) *before* the answer leaves, so a client that has its answer always
            sees it in the stats."""
            kind = fault.kind
            if kind in ("429", "500", "503", "404"):
                status = int(kind)
                headers = {"Retry-After": str(fault.retry_after_s)} if status == 429 else {}
                upstream.count(route, status)
                self._send(Reply(status, b'{"error":"injected"}', headers=headers))
                return
            if kind == "reset":
                upstream.count(route, 0)
                self.close_connection = True
                linger = struct.pack("ii", 1, 0)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                self.connection.close()
                return
            reply = upstream.reply(self.path)
            upstream.count(route, fault.status)
            if kind == "empty":
                self._send(Reply(fault.status, b""))
            elif kind == "invalid_json":
                self._send(Reply(fault.status, reply.body[: max(1, len(reply.body) // 2)]))
            elif kind == "html":
                self._send(Reply(fault.status, HTML_PAGE, content_type="text/html"))
            elif kind == "corrupt":
                self._send(Reply(fault.status, corrupt_candles(reply.body)))
            elif kind == "truncate":
                self._send(reply, truncate=True)

        def _send(self, reply: Reply, *, allow_gzip: bool = True, truncate: bool = False) -> None:
            """Status line, headers and body in one buffer, written once (see the module
            docstring: one write per answer keeps keep-alive clients at full speed)."""
            body = reply.body
            gzipped = allow_gzip and "gzip" in self.headers.get("Accept-Encoding", "")
            if gzipped:
                body = gzip.compress(body, compresslevel=5, mtime=0)
            phrase = self.responses[reply.status][0] if reply.status in self.responses else ""
            head = [
                f"{self.protocol_version} {reply.status} {phrase}",
                f"Server: {self.version_string()}",
                f"Date: {self.date_time_string()}",
                f"Content-Type: {reply.content_type}",
                f"Content-Length: {len(body)}",
            ]
            if gzipped:
                head.append("Content-Encoding: gzip")
            head.extend(f"{key}: {value}" for key, value in reply.headers.items())
            if truncate:
                head.append("Connection: close")
                self.close_connection = True
                body = body[: len(body) // 2]
            head.extend(("", ""))
            try:
                self.wfile.write("\r\n".join(head).encode("latin-1") + body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (a timeout); nothing to do

        def setup(self) -> None:
            super().setup()
            upstream.count_connection()  # one handler per accepted TCP connection
            # Answers of BaseHTTPRequestHandler itself (send_error: a malformed request line,
            # an unsupported method) still write headers and body separately.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def finish(self) -> None:
            with contextlib.suppress(OSError, ValueError):
                super().finish()

    return Handler
