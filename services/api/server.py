"""``barstream serve`` / ``python -m barstream.services.api``: the HTTP API under uvicorn.

uvicorn (httptools, uvloop) serves the starlette app of ``app.py`` on ``api.host:api.port``;
logs are one line per event with the service name (``api``), the access log included.
A port it cannot listen on is a usage error (exit 2) naming ``api.port``.

uvicorn waits for a request head and for a client to read its response for ever; the
protocol here (``guarded``) bounds both, so a slow or stalled client cannot hold a
connection, a gateway connection or a live-stream slot for long: a head not complete
``api.header_timeout_s`` after the connection (or after the first byte of the next request
on a kept-alive one) is answered 408 and closed; a response whose client has not read for
``api.send_timeout_s`` (the transport's buffer stayed full) is cut off (the connection is
aborted, which ends the response's body — and frees what it held — like a disconnect).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from barstream.shared import config as config_mod
from barstream.shared.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    BarstreamError,
    BindError,
    ConfigError,
)
from barstream.shared.service import setup_logging

log = logging.getLogger("barstream.api")


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or BindError naming ``api.port`` (address in use, bad host)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise BindError(
            "api.port", f"{host}:{port}", e.strerror or str(e), in_use=e.errno == errno.EADDRINUSE
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)


def guarded(header_timeout_s: float, send_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the two deadlines of the module docstring."""

    class Guarded(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _send_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_head()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._head_timer is None:
                self._arm_head()

        def on_headers_complete(self) -> None:
            self._cancel()
            super().on_headers_complete()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_timer = self.loop.call_later(send_timeout_s, self._stalled)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None
            super().connection_lost(exc)

        def _arm_head(self) -> None:
            self._head_timer = self.loop.call_later(header_timeout_s, self._slow_head)

        def _cancel(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _peer(self) -> str:
            return f"{self.client[0]}:{self.client[1]}" if self.client else "a client"

        def _slow_head(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            log.warning(
                "api: %s sent no complete request head in %gs (api.header_timeout_s); closed",
                self._peer(),
                header_timeout_s,
            )
            body = (
                b'{"error":"request-timeout","message":"no complete request head within '
                + f"{header_timeout_s:g}s (api.header_timeout_s)".encode()
                + b'"}'
            )
            self.transport.write(_TIMEOUT_408 % (len(body), body))
            self.transport.close()

        def _stalled(self) -> None:
            self._send_timer = None
            if self.transport.is_closing():
                return
            log.warning(
                "api: %s read none of its response for %gs (api.send_timeout_s); cut off",
                self._peer(),
                send_timeout_s,
            )
            self.transport.abort()

    return Guarded


def serve(cfg: config_mod.Config, *, access_log: bool = True) -> int:
    import uvicorn

    from barstream.services.api.app import create_app

    sock = bind(cfg.api.host, cfg.api.port)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg),
            loop="uvloop",
            http=guarded(cfg.api.header_timeout_s, cfg.api.send_timeout_s),
            log_config=None,  # our one-line format (setup_logging) for uvicorn's loggers too
            access_log=access_log,
            timeout_graceful_shutdown=5,
            limit_concurrency=cfg.api.max_streams + 4096,
            backlog=2048,
        )
    )
    server.run(sockets=[sock])
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="barstream serve",
        description="The HTTP API and live chart over the gateway (README, 'HTTP API').",
    )
    parser.add_argument("--config", "-c", type=Path, help="pipeline configuration file (TOML)")
    parser.add_argument("--host", help="listen on this host (default: api.host)")
    parser.add_argument("--port", type=int, help="listen on this port (default: api.port)")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    args = parser.parse_args(argv)
    setup_logging("api", args.log_level)
    try:
        cfg = config_mod.load(args.config) if args.config else config_mod.default()
        if args.host:
            cfg.api.host = args.host
        if args.port is not None:
            cfg.api.port = args.port
        return serve(cfg, access_log=not args.no_access_log)
    except BindError as e:
        log.error("cannot start: %s", e)
        return EXIT_USAGE
    except BarstreamError as e:
        log.error("cannot start: %s", e)
        return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_ERROR
    except OSError as e:
        log.error("stopped on I/O error: %s", e)
        return EXIT_ERROR
