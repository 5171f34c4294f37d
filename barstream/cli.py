"""``barstream`` — run, watch, check and export the pipeline.

    barstream demo [--live] [--duration S] [--keep]     offline demo (fake upstream) or live
    barstream run -c FILE [--detach] [--port-offset N]  the pipeline under supervisord
    barstream status -c FILE [--all] [--json]           services, lag, gaps, what needs attention
    barstream ctl ARGS…                                 supervisorctl (status, start, stop …)
    barstream stop                                      stop supervisord and every service
    barstream backfill -c FILE --start D --end D        fetch days into the raw cache
    barstream rebuild -c FILE                           stores from the raw cache, no downloads
    barstream verify -c FILE | --data-dir DIR           check every store; exit 1 on a fault
    barstream export SYMBOL TF --format csv|mt4|parquet  resampler store → file
    barstream sql "SELECT … FROM bars('EUR-USD','BID','1h')"  DuckDB over the stores (barstream.sql)
    barstream tail / history …                          the gateway client (services/gateway/cli.py)
    barstream --version                                 barstream X.Y.Z (the installed version)

Exit codes: 0 ok, 1 a fault was found or the operation failed, 2 usage or configuration error.

Here: ``main`` (errors → exit codes) and the parser, declared as data (``COMMANDS``: each
command's help, description and arguments, the shared ones written once); what each
command does is in ``barstream.commands``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from barstream import configs
from barstream import sql as sql_cli
from barstream.commands import (
    cmd_backfill,
    cmd_ctl,
    cmd_demo,
    cmd_export,
    cmd_rebuild,
    cmd_run,
    cmd_status,
    cmd_stop,
    cmd_verify,
)
from barstream.shared.config import SERVICES, SIDES
from barstream.shared.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    BarstreamError,
    ConfigError,
    SupervisorError,
)
from barstream.supervise import DEFAULT_EVENTS_PORT

Handler = Callable[[argparse.Namespace], int]


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


# -- the commands, declared ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Arg:
    """One ``add_argument`` call: its flags (or positional name) and keywords."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its name, handler, one-line help, --help description and arguments
    (in the order --help lists them)."""

    name: str
    run: Handler
    help: str
    description: str
    args: tuple[Arg, ...]

    def add_to(self, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(self.name, help=self.help, description=self.description)
        for a in self.args:
            p.add_argument(*a.flags, **a.options)
        p.set_defaults(func=self.run)


def config_arg(default: Path | None, what: str = "") -> Arg:
    """``--config/-c``: the pipeline configuration, ``default`` when not given."""
    return arg(
        "--config",
        "-c",
        type=Path,
        default=default,
        help=f"pipeline configuration (TOML){what}"
        + (f"; default the packaged {default.parent.name}/{default.name}" if default else ""),
    )


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-06-01") from None


#: The configuration argument of the commands whose default is config/live.toml.
LIVE: Final = config_arg(configs.LIVE_CONFIG)
#: Where supervisord runs and where its event listener serves metrics (supervisor commands).
SUPERVISOR: Final = (
    arg(
        "--var",
        type=Path,
        default=None,
        help="run directory of supervisord: socket, pid, logs (default $BARSTREAM_VAR or var/)",
    ),
    arg(
        "--events-port",
        type=int,
        default=DEFAULT_EVENTS_PORT,
        help=f"metrics port of the supervisor event listener (default {DEFAULT_EVENTS_PORT})",
    ),
)
QUIET: Final = arg("--quiet", "-q", action="store_true", help="no progress bar")
#: Moves every TCP port of a supervisord run (the configuration key pipeline.port_offset).
PORT_OFFSET: Final = arg(
    "--port-offset",
    type=int,
    metavar="N",
    help="add N to every TCP port of the run (feeds, metrics, gateway, fake upstream, "
    "--events-port): a second instance beside another; sets pipeline.port_offset in a copy "
    "of the configuration written to the run directory",
)

COMMANDS: Final = (
    Command(
        "demo",
        cmd_demo,
        "offline demo under supervisord with a live screen (Ctrl-C stops)",
        "Start every service and the fake Dukascopy upstream under supervisord "
        "(config/demo.toml; data starts empty unless --keep), wait until bars flow, then show "
        "a live status screen and the last EUR-USD 1m bars. Ctrl-C stops everything cleanly. "
        "Every TCP port of the run is checked first: a taken one exits 2, naming its "
        "configuration key (--port-offset N moves them all).",
        (
            config_arg(None, " (default config/demo.toml, or config/live.toml with --live)"),
            arg("--live", action="store_true", help="the real Dukascopy API (config/live.toml)"),
            arg("--duration", type=float, help="stop after this many seconds"),
            arg("--keep", action="store_true", help="keep the demo's data from earlier runs"),
            PORT_OFFSET,
            *SUPERVISOR,
        ),
    ),
    Command(
        "run",
        cmd_run,
        "run the pipeline under supervisord (foreground or --detach)",
        "Start supervisord with supervisord.conf and every service with the given "
        "configuration. Foreground until Ctrl-C (every service stops cleanly), or --detach. "
        "Every TCP port of the run is checked first: a taken one exits 2, naming its "
        "configuration key (--port-offset N moves them all).",
        (
            LIVE,
            arg("--detach", action="store_true", help="daemonize supervisord and return"),
            arg(
                "--fake-upstream",
                action="store_true",
                help="also start the fake upstream (demo mode)",
            ),
            PORT_OFFSET,
            *SUPERVISOR,
        ),
    ),
    Command(
        "stop",
        cmd_stop,
        "stop supervisord and every service",
        "Shut supervisord down (every service gets SIGTERM, commits and exits).",
        (config_arg(None), *SUPERVISOR),
    ),
    Command(
        "ctl",
        cmd_ctl,
        "supervisorctl with barstream's environment (status, start, stop, restart …)",
        "Run supervisorctl -c supervisord.conf ARGS with the environment "
        "supervisord.conf reads. Programs are barstream:downloader … barstream:gateway, "
        "barstream:fake_upstream and barstream_events; a bare name (gateway, fake_upstream) "
        "means barstream:NAME, e.g. barstream ctl restart gateway.",
        (
            config_arg(None),
            *SUPERVISOR,
            arg("ctl_args", nargs=argparse.REMAINDER, help="supervisorctl arguments"),
        ),
    ),
    Command(
        "status",
        cmd_status,
        "services, lag, gaps, held streams, errors; what needs attention (--all: every store)",
        "Scrape each service's /metrics (checkpoints for services that are down) "
        "and ask supervisord. By default one screen: a line per service, the streams covered "
        "and only what needs attention (gap days, held streams, a service behind or not "
        "hearing from its upstream, a store more than a day behind the newest of its "
        "timeframe); --all lists every store. Exit 1 when a shown service is down, a day is "
        "a gap or a stream is held.",
        (
            LIVE,
            arg("--json", action="store_true", help="machine-readable output"),
            arg("--all", action="store_true", help="every store, not only what needs attention"),
            arg(
                "--symbol",
                action="append",
                metavar="SYMBOL",
                help="only these symbols' streams (repeat, or comma-separated)",
            ),
            arg("--service", action="append", choices=SERVICES, help="only this service (repeat)"),
            *SUPERVISOR,
        ),
    ),
    Command(
        "backfill",
        cmd_backfill,
        "fetch a date range into the raw cache (progress bar)",
        "Fetch final days START..END (inclusive) for the symbols into the raw "
        "cache with the configuration's base URL and request budget. Cached days are skipped.",
        (
            LIVE,
            arg("--start", type=_date, required=True, help="first day, e.g. 2026-01-05"),
            arg("--end", type=_date, required=True, help="last day (inclusive)"),
            arg("--symbols", help="comma-separated (default: the configuration's)"),
            arg("--sides", help="comma-separated BID,ASK (default: the configuration's)"),
            QUIET,
        ),
    ),
    Command(
        "rebuild",
        cmd_rebuild,
        "rebuild every store from the raw cache (no downloads), report bars/s",
        "Stop the services, move their stores aside, run the pipeline in drain "
        "mode over the raw cache (downloader cache_only) until every store is committed, "
        "verify the result and restart the services that were running.",
        (
            LIVE,
            arg("--timeout", type=float, default=3600.0, help="give up after (seconds)"),
            QUIET,
            *SUPERVISOR,
        ),
    ),
    Command(
        "verify",
        cmd_verify,
        "check every store (header, order, OHLC, checkpoint); exit 1 on a fault",
        "Read every store under the data directory: header, strictly increasing "
        "ts_ms, low <= open,close <= high, finite positive prices, checkpoint vs file length. "
        "Prints FAULT file: record offset: what, one per line.",
        (
            LIVE,
            arg("--data-dir", type=Path, help="check this directory instead"),
            arg("--all", action="store_true", help="include stores moved aside by rebuild"),
            QUIET,
        ),
    ),
    Command(
        "export",
        cmd_export,
        "export a resampler store as CSV, MT4 CSV or Parquet",
        "Read data_dir/resampler/SYMBOL/SIDE/TIMEFRAME.bars (read-only). csv: "
        "time,open,high,low,close,volume,provisional (time UTC YYYY-MM-DDTHH:MM:SSZ, "
        "provisional 0/1; the format of `barstream history`); mt4: YYYY.MM.DD,HH:MM,O,H,L,C,V "
        "in MT4 server time (New York + 7h), no header; parquet: ts_ms, time, OHLCV, flags. "
        "MT4 from a utc-aligned store is refused (exit 2) for timeframes that do not divide an "
        'hour (4h, 1d, 1W …): set resampler.alignment = "mt4", or pass --allow-utc. '
        "Says on stderr where the bars went.",
        (
            arg("symbol", help="e.g. EUR-USD"),
            arg("timeframe", help="e.g. 1m, 1h, 1d"),
            arg("--side", default="BID", choices=SIDES),
            arg("--format", choices=("csv", "mt4", "parquet"), default="csv"),
            arg(
                "--output",
                "-o",
                type=Path,
                help="file (default stdout; parquet: SYMBOL-SIDE-TF.parquet here)",
            ),
            arg("--start", help="first bar open time, UTC ISO date/time (inclusive)"),
            arg("--end", help="end, UTC ISO date/time (exclusive)"),
            arg("--provisional", action="store_true", help="include the open bar"),
            arg(
                "--allow-utc",
                action="store_true",
                help="mt4: export a utc-aligned store's 4h/1d/1W/… bars anyway",
            ),
            LIVE,
            arg("--data-dir", type=Path, help="read this data directory instead"),
        ),
    ),
)


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
