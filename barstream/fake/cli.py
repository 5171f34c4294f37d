"""The fake upstream's command line: ``python -m barstream.fake``.

    python -m barstream.fake --config config/demo.toml
    python -m barstream.fake serve --port 8787 --start 2026-01-05 --speed 60 --seed 1
    python -m barstream.fake serve --fault '503:*/EUR-USD/*:count=3'
    python -m barstream.fake generate-cache DIR EUR-USD BID 2006-01-01 2025-12-31

``--config FILE`` serves as the pipeline configuration's ``[fake_upstream]`` section says
(port, speed, seed, start = the simulated time at startup), bound to ``pipeline.host``, so
the fake and the downloader's ``base_url`` come from one file; supervisord's
``barstream:fake_upstream`` program and docker-compose's ``demo`` profile run exactly this.
It logs to stderr; a bad configuration exits 2, and so does a port it cannot bind (the
message names ``fake_upstream.port``).

``serve`` takes every setting as an option (and ``--fault`` specs); it prints
``fake upstream listening on URL`` to stdout once it answers (tests read the URL of
``--port 0`` from that line) and its request statistics as JSON when it stops.
``generate-cache`` writes generated final days into a raw cache (see ``cache``).

Both servers stop cleanly on SIGTERM/SIGINT and exit 0. The real-data directory
(recorded responses, HistData) defaults to ``barstream.paths.real_data_dir()``, read when
the command runs; a directory that does not exist means generated data only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import logging
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from barstream import paths
from barstream.fake.cache import generate_cache
from barstream.fake.clock import SimClock, parse_iso_ms
from barstream.fake.faults import FAULT_KINDS
from barstream.fake.upstream import FakeUpstream
from barstream.shared import config as config_mod
from barstream.shared.config import Config
from barstream.shared.errors import BindError, ConfigError

log = logging.getLogger("barstream.fake")

PROG = "python -m barstream.fake"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None and args.config is None:
        parser.error("give --config FILE, or a command (serve, generate-cache)")
    if args.command is not None and args.config is not None:
        parser.error(f"--config serves as the file says; it does not go with {args.command}")
    if args.command == "serve":
        return run_serve(args)
    if args.command == "generate-cache":
        return run_generate(args)
    return run_config(args.config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [-h] --config FILE\n       {PROG} {{serve,generate-cache}} ...",
        description="The fake Dukascopy JSON API: a real HTTP server with a simulated clock, "
        "deterministic data and injectable faults (tests, the demo, benchmarks).",
    )
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="serve as the configuration's [fake_upstream] section says (port, speed, seed, "
        "simulated start), bound to pipeline.host (what supervisord and docker-compose run)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", prog=PROG)

    p = sub.add_parser(
        "serve",
        help="serve with every setting given as an option (and injected faults)",
        description="Serve a fake Dukascopy JSON API with a simulated clock and injectable "
        "faults; prints 'fake upstream listening on URL' once it answers.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8787, help="TCP port, 0 = ephemeral")
    p.add_argument(
        "--start",
        type=_iso_ms,
        default=None,
        help="simulated time at startup, ISO date/datetime UTC (default: now)",
    )
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument(
        "--instrument-start",
        type=_symbol_date,
        action="append",
        default=[],
        metavar="SYMBOL=DATE",
        help="first day of SYMBOL (its /v1/instruments document and its 404s); default 2000-01-01",
    )
    _data_args(p)
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:GLOB[:count=N|p=P][:delay=S][:retry_after=S][:status=N]]",
        help=f"inject a fault; kinds: {', '.join(FAULT_KINDS)}",
    )

    p = sub.add_parser(
        "generate-cache",
        help="write generated days into a raw cache (RawCache layout), no server",
        description="Write generated final days FROM..TO (inclusive) into a raw cache "
        "(RawCache layout).",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="root of the raw cache")
    p.add_argument("symbol", metavar="SYMBOL", help="e.g. EUR-USD")
    p.add_argument("side", metavar="SIDE", choices=("BID", "ASK"), help="BID or ASK")
    p.add_argument("start", metavar="FROM", type=_date, help="first day, e.g. 2006-01-01")
    p.add_argument("end", metavar="TO", type=_date, help="last day (inclusive)")
    _data_args(p)
    p.add_argument("--no-fsync", action="store_true", help="skip the final sync")
    return parser


def _data_args(p: argparse.ArgumentParser) -> None:
    """What the data is made of: the seed and the real-data directory (both commands)."""
    p.add_argument("--seed", type=int, default=1, help="seed of generated data and fault odds")
    p.add_argument(
        "--real-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="recorded responses and HistData (default $BARSTREAM_REAL_DATA, else "
        "../shared/data/real from the home; absent: generated data only)",
    )


def _iso_ms(text: str) -> int:
    try:
        return parse_iso_ms(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date/time") from None


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-06-01") from None


def _real_dir(given: Path | None) -> Path | None:
    """The real-data directory to use: the option, else the default; None when absent."""
    real_dir = given if given is not None else paths.real_data_dir()
    return real_dir if real_dir.is_dir() else None


# -- serve -------------------------------------------------------------------------------


def _symbol_date(text: str) -> tuple[str, dt.date]:
    symbol, sep, day = text.partition("=")
    if not sep or not symbol:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give SYMBOL=YYYY-MM-DD, e.g. GBP-USD=2004-01-05"
        )
    return symbol, _date(day)


def run_serve(args: argparse.Namespace) -> int:
    start_ms = args.start if args.start is not None else int(time.time() * 1000)
    upstream = FakeUpstream(
        clock=SimClock(start_ms, args.speed),
        seed=args.seed,
        host=args.host,
        port=args.port,
        real_dir=_real_dir(args.real_dir),
        instrument_starts=dict(args.instrument_start),
    )
    for spec in args.fault:
        upstream.add_fault(spec)
    serve_until_signal(
        upstream, lambda: print(f"fake upstream listening on {upstream.url}", flush=True)
    )
    print(f"fake upstream stopped: {json.dumps(upstream.stats())}", flush=True)
    return 0


def serve_until_signal(upstream: FakeUpstream, started: Callable[[], None]) -> None:
    """Start ``upstream`` (OSError when it cannot listen), call ``started``, serve until
    SIGTERM or SIGINT, then stop it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    upstream.start()
    try:
        started()
        while not stop.wait(1.0):
            pass
    finally:
        upstream.stop()


# -- generate-cache ----------------------------------------------------------------------


def run_generate(args: argparse.Namespace) -> int:
    began = time.monotonic()
    n = generate_cache(
        args.dir,
        args.symbol,
        args.side,
        args.start,
        args.end,
        seed=args.seed,
        real_dir=_real_dir(args.real_dir),
        durable=not args.no_fsync,
    )
    print(f"wrote {n} days to {args.dir} in {time.monotonic() - began:.1f} s")
    return 0


# -- --config FILE ------------------------------------------------------------------------


def run_config(path: Path) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s fake %(levelname)s %(message)s"
    )
    try:
        cfg = config_mod.load(path)
        check(cfg)
        upstream = build(cfg, real_dir=_real_dir(None))
    except ConfigError as e:
        log.error("cannot start: %s", e)
        return 2

    def started() -> None:
        log.info(
            "fake upstream on %s, simulated start %s, speed %gx, seed %d",
            upstream.url,
            cfg.fake_upstream.start or "now",
            cfg.fake_upstream.speed,
            cfg.fake_upstream.seed,
        )

    try:
        serve_until_signal(upstream, started)
    except OSError as e:
        err = BindError(
            "fake_upstream.port",
            cfg.fake_upstream.port,
            f"cannot listen on {cfg.pipeline.host}:{cfg.fake_upstream.port}: {e.strerror or e}",
            in_use=e.errno == errno.EADDRINUSE,
            path=cfg.source,
        )
        log.error("cannot start: %s", err)
        return 2
    log.info("stopped")
    return 0


def sim_start_ms(cfg: Config) -> int:
    """The simulated time at startup: ``fake_upstream.start`` (ISO, UTC), else now."""
    text = cfg.fake_upstream.start
    if not text:
        return int(time.time() * 1000)
    try:
        return parse_iso_ms(text)
    except ValueError:
        raise ConfigError(
            "fake_upstream.start",
            text,
            "not an ISO date/time like 2026-06-24T12:00",
            path=cfg.source,
        ) from None


def check(cfg: Config) -> None:
    """The downloader must reach this fake: same port in ``downloader.base_url``."""
    url = urllib.parse.urlsplit(cfg.downloader.base_url)
    if url.port is not None and url.port != cfg.fake_upstream.port:
        raise ConfigError(
            "downloader.base_url",
            cfg.downloader.base_url,
            f"does not point at the fake upstream's port {cfg.fake_upstream.port}",
            path=cfg.source,
        )
    if cfg.fake_upstream.speed <= 0:
        raise ConfigError(
            "fake_upstream.speed", cfg.fake_upstream.speed, "must be > 0", path=cfg.source
        )


def build(cfg: Config, *, real_dir: Path | None) -> FakeUpstream:
    """The server ``cfg`` describes (not started); ``real_dir`` None: generated data only."""
    fu = cfg.fake_upstream
    return FakeUpstream(
        clock=SimClock(sim_start_ms(cfg), fu.speed),
        seed=fu.seed,
        host=cfg.pipeline.host,
        port=fu.port,
        real_dir=real_dir,
    )
