"""``barstream`` — run, watch, check and export the pipeline.

    barstream demo [--live] [--duration S] [--keep]     offline demo (fake upstream) or live
    barstream run -c FILE [--detach]                    the pipeline under supervisord
    barstream status -c FILE [--json]                   services, stores, lag, gaps, errors
    barstream ctl ARGS…                                 supervisorctl (status, start, stop …)
    barstream stop                                      stop supervisord and every service
    barstream backfill -c FILE --start D --end D        fetch days into the raw cache
    barstream rebuild -c FILE                           stores from the raw cache, no downloads
    barstream verify -c FILE | --data-dir DIR           check every store; exit 1 on a fault
    barstream export SYMBOL TF --format csv|mt4|parquet  resampler store → file
    barstream tail / history …                          the gateway client (services/gateway/cli.py)

Exit codes: 0 ok, 1 a fault was found or the operation failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from barstream import configs
from barstream.shared.config import SIDES
from barstream.shared.errors import BarstreamError, ConfigError
from barstream.supervise import (
    DEFAULT_EVENTS_PORT,
    Supervisor,
    SupervisorError,
    default_var_dir,
    service_programs,
)

EXIT_OK = 0
EXIT_FAULT = 1
EXIT_USAGE = 2

Handler = Callable[[argparse.Namespace], int]


def _config_arg(p: argparse.ArgumentParser, default: Path | None, what: str = "") -> None:
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        default=default,
        help=f"pipeline configuration (TOML){what}"
        + (f"; default the packaged {default.parent.name}/{default.name}" if default else ""),
    )


def _var_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--var",
        type=Path,
        default=None,
        help="run directory of supervisord: socket, pid, logs (default $BARSTREAM_VAR or var/)",
    )
    p.add_argument(
        "--events-port",
        type=int,
        default=DEFAULT_EVENTS_PORT,
        help=f"metrics port of the supervisor event listener (default {DEFAULT_EVENTS_PORT})",
    )


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-06-01") from None


def _supervisor(args: argparse.Namespace, *, demo: bool = False) -> Supervisor:
    return Supervisor(
        args.config or configs.LIVE_CONFIG,
        args.var or default_var_dir(),
        demo=demo,
        events_port=args.events_port,
    )


# -- commands --------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from barstream import demo

    path = args.config or (configs.LIVE_CONFIG if args.live else configs.DEMO_CONFIG)
    return demo.run(
        path,
        live=args.live,
        keep=args.keep or args.live,
        duration_s=args.duration,
        var_dir=args.var or default_var_dir(),
        events_port=args.events_port,
    )


def cmd_run(args: argparse.Namespace) -> int:
    configs.load(args.config)  # fail here, with the key path, not inside five services
    sup = _supervisor(args, demo=args.fake_upstream)
    proc = sup.start(foreground=not args.detach)
    names = service_programs(demo=args.fake_upstream)
    states = sup.wait_running(names, 30.0)
    print(
        "barstream: "
        + ", ".join(f"{n} {s}" for n, s in states.items())
        + f"; logs in {sup.log_dir}",
        file=sys.stderr,
    )
    if args.detach:
        print(
            "barstream: supervisord runs detached; stop it with `barstream stop`", file=sys.stderr
        )
        return EXIT_OK if all(s == "RUNNING" for s in states.values()) else EXIT_FAULT
    assert proc is not None
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nbarstream: stopping every service …", file=sys.stderr)
        sup.shutdown(proc)
        return EXIT_OK
    print(f"barstream: supervisord exited {proc.returncode}", file=sys.stderr)
    return EXIT_FAULT


def cmd_stop(args: argparse.Namespace) -> int:
    sup = _supervisor(args)
    if not sup.running():
        print(f"barstream: no supervisord answers on {sup.socket_path}", file=sys.stderr)
        return EXIT_OK
    sup.shutdown()
    print("barstream: supervisord and every service stopped", file=sys.stderr)
    return EXIT_OK


def cmd_ctl(args: argparse.Namespace) -> int:
    sup = _supervisor(args)
    return sup.ctl(args.ctl_args)


def cmd_status(args: argparse.Namespace) -> int:
    from barstream import status

    cfg = configs.load(args.config)
    statuses = status.collect(cfg, _supervisor(args))
    if args.json:
        print(json.dumps(status.as_json(statuses), indent=2))
    else:
        print(status.render(statuses))
    return EXIT_FAULT if any(s.faults for s in statuses) else EXIT_OK


def cmd_backfill(args: argparse.Namespace) -> int:
    from barstream.backfill import backfill

    cfg = configs.load(args.config)
    if args.end < args.start:
        raise ConfigError("--end", str(args.end), "is before --start")
    symbols = args.symbols.split(",") if args.symbols else list(cfg.pipeline.symbols)
    sides = args.sides.split(",") if args.sides else list(cfg.pipeline.sides)
    for side in sides:
        if side not in SIDES:
            raise ConfigError("--sides", side, "must be BID or ASK")
    res = asyncio.run(backfill(cfg, symbols, sides, args.start, args.end, progress=not args.quiet))
    print(
        f"backfill: {res.fetched} days fetched ({res.bytes / 1e6:.1f} MB in {res.elapsed_s:.1f}s), "
        f"{res.cached_already} already cached, {res.not_final} not final yet, "
        f"{len(res.not_found)} not found, {len(res.failed)} failed",
        file=sys.stderr,
    )
    for line in [*res.not_found, *res.failed][:20]:
        print(f"  {line}", file=sys.stderr)
    return EXIT_FAULT if res.failed or res.not_found else EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from barstream.rebuild import RebuildError, rebuild

    cfg = configs.load(args.config)
    sup = _supervisor(args)
    try:
        res = rebuild(
            args.config,
            cfg,
            sup,
            timeout_s=args.timeout,
            log_dir=sup.log_dir,
            progress=not args.quiet,
        )
    except RebuildError as e:
        print(f"rebuild failed: {e}", file=sys.stderr)
        return EXIT_FAULT
    print(
        f"rebuild: {res.bars_1m:,} 1m bars in {res.elapsed_s:.1f}s = {res.bars_per_s:,.0f} bars/s; "
        + ", ".join(f"{n} {c:,}" for n, c in res.records.items())
        + " records committed",
        file=sys.stderr,
    )
    if res.aside is not None:
        print(f"rebuild: the old stores are in {res.aside} (delete when happy)", file=sys.stderr)
    if res.restarted:
        print(f"rebuild: restarted {', '.join(res.restarted)}", file=sys.stderr)
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from barstream.verify import plan, verify_store

    if args.data_dir is not None:
        root = args.data_dir
    else:
        root = configs.data_root(configs.load(args.config))
    if not root.is_dir():
        print(f"verify: {root}: no such data directory", file=sys.stderr)
        return EXIT_USAGE
    items = [(s, m, pre) for s, m, pre in plan(root) if ".aside-" not in str(s) or args.all]
    faults = 0
    records = 0
    stores = 0
    for store, mark, pre in tqdm(items, unit="store", desc="verify", disable=args.quiet):
        found = list(pre)
        if store.suffix == ".bars":
            report = verify_store(store, mark)
            found += report.faults
            records += report.records
            stores += 1
        for f in found:
            print(f"FAULT {f}")
        faults += len(found)
    print(
        f"verify: {stores} stores, {records:,} records under {root}: "
        + (f"{faults} fault(s)" if faults else "ok"),
        file=sys.stderr,
    )
    return EXIT_FAULT if faults else EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from barstream import export

    if args.data_dir is not None:
        root = args.data_dir
    else:
        root = configs.data_root(configs.load(args.config))
    path = export.store_path(root, args.symbol, args.side, args.timeframe)
    try:
        start = export.parse_time_ms(args.start) if args.start else None
        end = export.parse_time_ms(args.end) if args.end else None
    except ValueError as e:
        raise ConfigError("--start/--end", args.start or args.end, str(e)) from None
    records = export.read(path, start_ms=start, end_ms=end, provisional=args.provisional)
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("export: parquet needs pyarrow (pip install pyarrow)", file=sys.stderr)
            return EXIT_USAGE
        out = args.output or Path(f"{args.symbol}-{args.side}-{args.timeframe}.parquet")
        export.write_parquet(records, out)
    else:
        lines = export.csv_lines(records) if args.format == "csv" else export.mt4_lines(records)
        if args.output is None:
            export.write_text(lines, sys.stdout)
        else:
            with args.output.open("w", newline="") as f:
                export.write_text(lines, f)
    where = args.output or ("stdout" if args.format != "parquet" else out)
    print(f"export: {len(records)} bars of {path} → {where}", file=sys.stderr)
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------


def _gateway_cli() -> tuple[Any, str]:
    """barstream.services.gateway.cli, imported lazily (the gateway may be absent or broken)."""
    try:
        from barstream.services.gateway import cli as gateway_cli
    except Exception as e:  # ImportError, or an error inside the module
        return None, f"{type(e).__name__}: {e}"
    return gateway_cli, ""


def _unavailable(name: str, why: str) -> Handler:
    def run(_args: argparse.Namespace) -> int:
        print(
            f"barstream {name}: the gateway client CLI (services/gateway/cli.py) is not "
            f"available: {why}",
            file=sys.stderr,
        )
        return EXIT_FAULT

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barstream",
        description="Keep Dukascopy market data up to date as exact multi-timeframe OHLCV "
        "stores; run, watch, check and export the pipeline.",
        epilog="Exit codes: 0 ok, 1 fault found / operation failed, 2 usage or config error.",
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo",
        help="offline demo under supervisord with a live screen (Ctrl-C stops)",
        description="Start every service and the fake Dukascopy upstream under supervisord "
        "(config/demo.toml; data starts empty unless --keep), wait until bars flow, then show "
        "a live status screen and the last EUR-USD 1m bars. Ctrl-C stops everything cleanly.",
    )
    _config_arg(p, None, " (default config/demo.toml, or config/live.toml with --live)")
    p.add_argument("--live", action="store_true", help="the real Dukascopy API (config/live.toml)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the demo's data from earlier runs")
    _var_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "run",
        help="run the pipeline under supervisord (foreground or --detach)",
        description="Start supervisord with supervisord.conf and every service with the given "
        "configuration. Foreground until Ctrl-C (every service stops cleanly), or --detach.",
    )
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--detach", action="store_true", help="daemonize supervisord and return")
    p.add_argument(
        "--fake-upstream", action="store_true", help="also start the fake upstream (demo mode)"
    )
    _var_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "stop",
        help="stop supervisord and every service",
        description="Shut supervisord down (every service gets SIGTERM, commits and exits).",
    )
    _config_arg(p, None)
    _var_arg(p)
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "ctl",
        help="supervisorctl with barstream's environment (status, start, stop, restart …)",
        description="Run supervisorctl -c supervisord.conf ARGS with the environment "
        "supervisord.conf reads. Programs are barstream:downloader … barstream:gateway, "
        "barstream:fake_upstream and barstream_events.",
    )
    _config_arg(p, None)
    _var_arg(p)
    p.add_argument("ctl_args", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    p.set_defaults(func=cmd_ctl)

    p = sub.add_parser(
        "status",
        help="services, stores, committed offsets, lag, last bars, gaps, held symbols, errors",
        description="Scrape each service's /metrics (checkpoints for services that are down) "
        "and ask supervisord. Exit 1 when a service is down, a day is a gap or a stream is held.",
    )
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _var_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "backfill",
        help="fetch a date range into the raw cache (progress bar)",
        description="Fetch final days START..END (inclusive) for the symbols into the raw "
        "cache with the configuration's base URL and request budget. Cached days are skipped.",
    )
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--start", type=_date, required=True, help="first day, e.g. 2026-01-05")
    p.add_argument("--end", type=_date, required=True, help="last day (inclusive)")
    p.add_argument("--symbols", help="comma-separated (default: the configuration's)")
    p.add_argument("--sides", help="comma-separated BID,ASK (default: the configuration's)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser(
        "rebuild",
        help="rebuild every store from the raw cache (no downloads), report bars/s",
        description="Stop the services, move their stores aside, run the pipeline in drain "
        "mode over the raw cache (downloader cache_only) until every store is committed, "
        "verify the result and restart the services that were running.",
    )
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--timeout", type=float, default=3600.0, help="give up after (seconds)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _var_arg(p)
    p.set_defaults(func=cmd_rebuild)

    p = sub.add_parser(
        "verify",
        help="check every store (header, order, OHLC, checkpoint); exit 1 on a fault",
        description="Read every store under the data directory: header, strictly increasing "
        "ts_ms, low <= open,close <= high, finite positive prices, checkpoint vs file length. "
        "Prints FAULT file: record offset: what, one per line.",
    )
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--data-dir", type=Path, help="check this directory instead")
    p.add_argument("--all", action="store_true", help="include stores moved aside by rebuild")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "export",
        help="export a resampler store as CSV, MT4 CSV or Parquet",
        description="Read data_dir/resampler/SYMBOL/SIDE/TIMEFRAME.bars (read-only). csv: "
        "time,open,high,low,close,volume (UTC); mt4: YYYY.MM.DD,HH:MM,O,H,L,C,V in MT4 server "
        "time (New York + 7h), no header; parquet: ts_ms, time, OHLCV, flags.",
    )
    p.add_argument("symbol", help="e.g. EUR-USD")
    p.add_argument("timeframe", help="e.g. 1m, 1h, 1d")
    p.add_argument("--side", default="BID", choices=SIDES)
    p.add_argument("--format", choices=("csv", "mt4", "parquet"), default="csv")
    p.add_argument("--output", "-o", type=Path, help="file (default stdout; parquet: a file)")
    p.add_argument("--start", help="first bar open time, UTC ISO date/time (inclusive)")
    p.add_argument("--end", help="end, UTC ISO date/time (exclusive)")
    p.add_argument("--provisional", action="store_true", help="include the open bar")
    _config_arg(p, configs.LIVE_CONFIG)
    p.add_argument("--data-dir", type=Path, help="read this data directory instead")
    p.set_defaults(func=cmd_export)

    gateway_cli, why = _gateway_cli()
    if gateway_cli is not None:
        gateway_cli.add_tail_parser(sub)
        gateway_cli.add_history_parser(sub)
    else:
        for name in ("tail", "history"):
            p = sub.add_parser(
                name,
                help=f"(unavailable: services/gateway/cli.py failed to import: {why})",
                description=f"Not available: services/gateway/cli.py failed to import: {why}",
            )
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(func=_unavailable(name, why))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.func
    try:
        return handler(args)
    except ConfigError as e:
        print(f"barstream {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (BarstreamError, SupervisorError, OSError) as e:
        if args.traceback:
            traceback.print_exc()
        print(f"barstream {args.command}: {e}", file=sys.stderr)
        return EXIT_FAULT
    except KeyboardInterrupt:
        return 130
