"""The ``barstream`` commands declared as data: ``COMMANDS`` (each command's help,
description and arguments, the shared arguments written once). ``barstream.cli`` builds the
parser from it; what each command does is in ``barstream.commands``."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from barstream import configs
from barstream.commands import (
    cmd_backfill,
    cmd_ctl,
    cmd_demo,
    cmd_export,
    cmd_rebuild,
    cmd_run,
    cmd_serve,
    cmd_skip_day,
    cmd_status,
    cmd_stop,
    cmd_verify,
)
from barstream.shared.config import SERVICES, SIDES
from barstream.supervise import DEFAULT_EVENTS_PORT

Handler = Callable[[argparse.Namespace], int]


def _import_cache(args: argparse.Namespace) -> int:
    from barstream.import_cache import cmd_import_cache

    return cmd_import_cache(args)


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
#: Accept the gaps the user chose (``barstream skip-day``) in rebuild's and verify's exit code.
ALLOW_SKIPPED: Final = arg(
    "--allow-skipped",
    action="store_true",
    help="exit 0 when the only missing days are those skipped by the user (barstream "
    "skip-day); they are still listed. Held streams and other gaps still exit 1",
)
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
        "timeframe); --all lists every store. The health line (and --json's health, "
        "unhealthy) gives each service's state — healthy, degraded, failed — with its reasons "
        "(held, gap, upstream_stalled, lag, helper_restarted, rejected, fatal, down). Exit 1 "
        "when a shown service is down, a day is a gap or a stream is held; degraded only by "
        "lag, a stalled upstream, a helper restart or rejected messages exits 0.",
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
        "serve",
        cmd_serve,
        "the HTTP API and live chart over the gateway (foreground)",
        "Serve the gateway's bars over HTTP on api.host:api.port (default 8790): "
        "/v1/bars/SYMBOL/SIDE/TF in json, ndjson, csv, mt4, arrow, parquet; live bars as "
        "Server-Sent Events on /v1/stream/SYMBOL/SIDE/TF (resume with Last-Event-ID); "
        "/v1/topics, /v1/status, /healthz, /metrics, /openapi.json; the chart page on /. "
        "It talks to the gateway's sockets only, so it can run on another host. Under "
        "`barstream run`/`demo` supervisord runs it as the program barstream:api.",
        (
            LIVE,
            arg("--host", help="listen on this host (default api.host: pipeline.host)"),
            arg("--port", type=int, help="listen on this port (default api.port, 8790)"),
            arg("--no-access-log", action="store_true", help="no log line per request"),
        ),
    ),
    Command(
        "backfill",
        cmd_backfill,
        "fetch a date range into the raw cache (progress bar)",
        "Fetch final days START..END (inclusive) for the symbols into the raw "
        "cache with the configuration's base URL and request budget (one budget for every "
        "symbol and side, over keep-alive connections). Each symbol starts at "
        "downloader.history_start, else at the first candle of its instrument metadata "
        "(asked once, kept in raw/_meta): no earlier day is asked for. Cached days are "
        "skipped unless --refetch, so a killed backfill run again resumes.",
        (
            LIVE,
            arg("--start", type=_date, required=True, help="first day, e.g. 2026-01-05"),
            arg("--end", type=_date, required=True, help="last day (inclusive)"),
            arg("--symbols", help="comma-separated (default: the configuration's)"),
            arg("--sides", help="comma-separated BID,ASK (default: the configuration's)"),
            arg(
                "--refetch",
                action="store_true",
                help="fetch cached days too; a changed body replaces the cached one (kept "
                "under raw/_versions): a good version of a bad day",
            ),
            QUIET,
        ),
    ),
    Command(
        "import-cache",
        _import_cache,
        "take the original project's download cache into the raw cache (checked)",
        "Check every file of the original batch project's cache (PATH/cache/YYYY/MM/"
        "SYMBOL_YYYYMMDD.json, BID; live files in PATH/data/temp are partial days and are "
        "left to the downloader) as the transformer decodes it, and hard-link the good ones into the raw "
        "cache (copied across filesystems). Days the raw cache has already are kept. Lists "
        "each refused file and why, and exits 1 when any was refused; then run "
        "`barstream rebuild`.",
        (
            arg("path", type=Path, help="the original project's folder (or its cache/)"),
            LIVE,
            arg("--symbols", help="comma-separated (default: the configuration's)"),
            arg("--all", action="store_true", help="every symbol found, configured or not"),
            arg("--copy", action="store_true", help="copy instead of hard-linking"),
            QUIET,
        ),
    ),
    Command(
        "skip-day",
        cmd_skip_day,
        "drop a bad historical day as an explicit, reported gap",
        "Record that DAY (..END) of SYMBOL/SIDE is a gap by your decision: the bad version "
        "in the raw cache (or, with no body, the day) is journaled as a gap skipped by the "
        "user, by every rebuild and by a running downloader; the transformer moves past it; "
        "status, metrics, rebuild and verify report it. A day that decodes fine is refused "
        "(exit 2). A good version later (backfill --refetch) fills the gap.",
        (
            LIVE,
            arg("--symbol", required=True, help="e.g. EUR-USD"),
            arg("--side", required=True, choices=SIDES),
            arg("--day", type=_date, required=True, help="the day, e.g. 2024-03-06"),
            arg("--end", type=_date, help="last day (inclusive) of a run of days to skip"),
            arg("--reason", help="your words, kept with the decision and reported"),
        ),
    ),
    Command(
        "rebuild",
        cmd_rebuild,
        "rebuild every store from the raw cache (no downloads), report bars/s",
        "Stop the services, move their stores aside, run the pipeline in drain "
        "mode over the raw cache (downloader cache_only) until every store is committed, "
        "verify the result and restart the services that were running. Then lists what the "
        "stores lack — a stream held by a bad payload (symbol, side, day, field, error), gap "
        "days (a day missing from the raw cache before later cached days is one), days "
        "skipped by the user — each with the command that re-fetches it or drops it as an "
        "explicit gap, and exits 1 on any of them.",
        (
            LIVE,
            arg("--timeout", type=float, default=3600.0, help="give up after (seconds)"),
            ALLOW_SKIPPED,
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
        "Then, unless --no-recompute, recompute every store from its upstream (every "
        "store is a pure function of it: the journal's bodies in the raw cache, each day "
        "version decoded again, the 1m series merged again, every timeframe resampled again, "
        "every replica against its original) and compare byte for byte, so a damaged record "
        "body is found too. "
        "Prints FAULT file: record offset: what, one per line, and the command that repairs "
        "it. Then the history the stores "
        "lack, as rebuild lists it (HELD / GAP / SKIPPED, each with what to do). Exit 1 on "
        "a fault or on missing history.",
        (
            LIVE,
            arg("--data-dir", type=Path, help="check this directory instead"),
            arg(
                "--no-recompute",
                action="store_true",
                help="only the checks of each file on its own (fast), no recomputation",
            ),
            arg("--all", action="store_true", help="include stores moved aside by rebuild"),
            ALLOW_SKIPPED,
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
        "Says on stderr where the bars went. A held stream, gap days or days skipped by the "
        "user in the range are named on stderr (as verify lists them) and exit 1: the "
        "export is cut short (--allow-skipped: days skipped by the user only warn).",
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
            arg(
                "--week-label",
                choices=("monday", "sunday"),
                default="monday",
                help="mt4: label 1W bars with their Monday (default, as the original project) "
                "or the Sunday before (as MetaTrader's W1); 1M/1Y bars are the 1st at 00:00",
            ),
            LIVE,
            arg("--data-dir", type=Path, help="read this data directory instead"),
            ALLOW_SKIPPED,
        ),
    ),
)
