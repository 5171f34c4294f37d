"""``barstream`` — run, watch, check and export the pipeline.

    barstream demo [--live] [--duration S] [--keep]     offline demo (fake upstream) or live
    barstream run -c FILE [--detach] [--port-offset N]  the pipeline under supervisord
    barstream status -c FILE [--all] [--json]           services, lag, gaps, what needs attention
    barstream ctl ARGS…                                 supervisorctl (status, start, stop …)
    barstream stop                                      stop supervisord and every service
    barstream backfill -c FILE --start D --end D        fetch days into the raw cache
    barstream skip-day -c FILE --symbol S --side B --day D   a bad day as an explicit gap
    barstream rebuild -c FILE                           stores from the raw cache, no downloads
    barstream verify -c FILE | --data-dir DIR           check every store; exit 1 on a fault
    barstream export SYMBOL TF --format csv|mt4|parquet  resampler store → file
    barstream serve -c FILE                             HTTP API + live chart (port 8790)
    barstream sql "SELECT … FROM bars('EUR-USD','BID','1h')"  DuckDB over the stores (barstream.sql)
    barstream tail / history …                          the gateway client (services/gateway/cli.py)
    barstream --version                                 barstream X.Y.Z (the installed version)

Exit codes: 0 ok, 1 a fault was found or the operation failed, 2 usage or configuration error.

Here: ``main`` (errors → exit codes) and the parser, built from ``COMMANDS``
(``barstream.cli_commands``: the commands declared as data); what each command does is in
``barstream.commands``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from barstream import sql as sql_cli
from barstream.cli_commands import COMMANDS, Command, Handler, arg
from barstream.shared.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    BarstreamError,
    ConfigError,
    SupervisorError,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        code = handler(args)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not at exit
        return code
    except BrokenPipeError:  # `barstream history … | head`: the reader has all it wants
        return stdout_closed()
    except ConfigError as e:
        print(f"barstream {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (BarstreamError, SupervisorError, OSError) as e:
        if args.traceback:
            traceback.print_exc()
        print(f"barstream {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def stdout_closed() -> int:
    """The reader of stdout went away (``| head``): point stdout at /dev/null, so the
    interpreter's final flush does not fail again, and exit 0 without a word."""
    with contextlib.suppress(OSError, ValueError):  # stdout without a descriptor (tests)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """Every command of :data:`COMMANDS`, then ``tail`` and ``history`` from the gateway's CLI."""
    parser = argparse.ArgumentParser(
        prog="barstream",
        description="Keep Dukascopy market data up to date as exact multi-timeframe OHLCV "
        "stores; run, watch, check and export the pipeline.",
        epilog="Exit codes: 0 ok, 1 fault found / operation failed, 2 usage or config error.",
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--version", action="version", version=f"barstream {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gateway_cli, why = _gateway_cli()
    for command in COMMANDS:
        command.add_to(sub)
    sql_cli.add_parser(sub)
    if gateway_cli is not None:
        gateway_cli.add_tail_parser(sub)
        gateway_cli.add_history_parser(sub)
    else:
        for name in ("tail", "history"):
            _unavailable(name, why).add_to(sub)
    return parser


def _version() -> str:
    """The installed distribution's version (pyproject.toml's, via importlib.metadata)."""
    try:
        return importlib.metadata.version("barstream")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


# -- tail and history: the gateway client's CLI, mounted ------------------------------------


def _gateway_cli() -> tuple[Any, str]:
    """barstream.services.gateway.cli, imported lazily (the gateway may be absent or broken)."""
    try:
        from barstream.services.gateway import cli as gateway_cli
    except Exception as e:  # ImportError, or an error inside the module
        return None, f"{type(e).__name__}: {e}"
    return gateway_cli, ""


def _unavailable(name: str, why: str) -> Command:
    """``tail``/``history`` when the gateway's CLI does not import: say why, exit 1."""

    def run(_args: argparse.Namespace) -> int:
        print(
            f"barstream {name}: the gateway client CLI (services/gateway/cli.py) is not "
            f"available: {why}",
            file=sys.stderr,
        )
        return EXIT_ERROR

    return Command(
        name,
        run,
        f"(unavailable: services/gateway/cli.py failed to import: {why})",
        f"Not available: services/gateway/cli.py failed to import: {why}",
        (arg("rest", nargs=argparse.REMAINDER),),
    )
