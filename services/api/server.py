"""``barstream serve`` / ``python -m barstream.services.api``: the HTTP API under uvicorn.

uvicorn (httptools, uvloop) serves the starlette app of ``app.py`` on ``api.host:api.port``;
logs are one line per event with the service name (``api``), the access log included.
A port it cannot listen on is a usage error (exit 2) naming ``api.port``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from collections.abc import Sequence
from pathlib import Path

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


def serve(cfg: config_mod.Config, *, access_log: bool = True) -> int:
    import uvicorn

    from barstream.services.api.app import create_app

    sock = bind(cfg.api.host, cfg.api.port)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(cfg),
            loop="uvloop",
            http="httptools",
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
