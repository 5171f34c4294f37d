"""What each ``barstream`` subcommand does: one function a command, parsed arguments in,
exit code out (the parser and the error handling around these are in ``barstream.cli``).

A handler loads the configuration itself (so a bad file fails with the key path before
anything starts), prints its results to stdout and its summary and progress to stderr, and
raises ``ConfigError`` for a bad value (``main`` turns it into exit 2). Heavy modules
(status, backfill, rebuild, verify, export, tqdm) are imported inside the handler, so
``barstream --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from barstream import configs, ports
from barstream.shared.config import SERVICES, SIDES
from barstream.shared.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, ConfigError, RebuildError
from barstream.supervise import Supervisor, default_var_dir, service_programs

if TYPE_CHECKING:
    from barstream import missing


def cmd_demo(args: argparse.Namespace) -> int:
    from barstream import demo

    path = args.config or (configs.LIVE_CONFIG if args.live else configs.DEMO_CONFIG)
    var_dir = args.var or default_var_dir()
    return demo.run(
        _with_port_offset(path, args.port_offset, var_dir),
        live=args.live,
        keep=args.keep or args.live,
        duration_s=args.duration,
        var_dir=var_dir,
        events_port=args.events_port,
    )


def cmd_run(args: argparse.Namespace) -> int:
    var_dir = args.var or default_var_dir()
    path = _with_port_offset(args.config, args.port_offset, var_dir)
    cfg = configs.load(path)  # fail here, with the key path, not inside five services
    sup = Supervisor(
        path,
        var_dir,
        demo=args.fake_upstream,
        events_port=ports.events_port(cfg, args.events_port),
    )
    sup.check_not_running()
    free = ports.check_free(
        cfg, fake=args.fake_upstream, events_port=sup.events_port, prefix="barstream run"
    )
    if not free:
        return EXIT_USAGE
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
        return EXIT_OK if all(s == "RUNNING" for s in states.values()) else EXIT_ERROR
    assert proc is not None
    try:
        while proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nbarstream: stopping every service …", file=sys.stderr)
        sup.shutdown(proc)
        return EXIT_OK
    print(f"barstream: supervisord exited {proc.returncode}", file=sys.stderr)
    return EXIT_ERROR


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
    from barstream import missing, status, status_view

    cfg = configs.load(args.config)
    symbols = [x for words in args.symbol or () for x in words.split(",") if x]
    unknown = [x for x in symbols if x not in cfg.pipeline.symbols]
    if unknown:
        raise ConfigError(
            "--symbol", ",".join(unknown), f"not in pipeline.symbols {list(cfg.pipeline.symbols)}"
        )
    services = [n for n in SERVICES if n in args.service] if args.service else SERVICES
    statuses = status.select(status.collect(cfg, _supervisor(args), services), symbols=symbols)
    lacking = [
        m for m in missing.scan(configs.data_root(cfg)) if not symbols or m.symbol in symbols
    ]
    if args.json:
        print(json.dumps(status.as_json(statuses, lacking, str(args.config)), indent=2))
    else:
        print(status_view.render(statuses, full=args.all))
        if lacking:
            print(f"\nmissing history: {missing.summary(lacking)}")
            print("\n".join(missing.lines(lacking, str(args.config))))
    faults = any(s.faults for s in statuses) or missing.failing(lacking, allow_skipped=False)
    return EXIT_ERROR if faults else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from barstream.services.api import server
    from barstream.shared.service import setup_logging

    setup_logging("api")
    cfg = configs.load(args.config)
    if args.host:
        cfg.api.host = args.host
    if args.port is not None:
        cfg.api.port = args.port
    return server.serve(cfg, access_log=not args.no_access_log)


def cmd_backfill(args: argparse.Namespace) -> int:
    from barstream.backfill import backfill, report

    cfg = configs.load(args.config)
    if args.end < args.start:
        raise ConfigError("--end", str(args.end), "is before --start")
    symbols = args.symbols.split(",") if args.symbols else list(cfg.pipeline.symbols)
    sides = args.sides.split(",") if args.sides else list(cfg.pipeline.sides)
    for side in sides:
        if side not in SIDES:
            raise ConfigError("--sides", side, "must be BID or ASK")
    res = asyncio.run(
        backfill(
            cfg, symbols, sides, args.start, args.end, progress=not args.quiet, refetch=args.refetch
        )
    )
    rerun = (
        f"barstream backfill -c {args.config} --start {{start}} --end {{end}} "
        "--symbols {symbols} --sides {sides}"
    )
    for line in report(res, rerun=rerun):
        print(line, file=sys.stderr)
    return EXIT_ERROR if res.missing else EXIT_OK


def cmd_skip_day(args: argparse.Namespace) -> int:
    from barstream.skip import skip_days

    cfg = configs.load(args.config)
    done = skip_days(cfg, args.symbol, args.side, args.day, args.end or args.day, args.reason or "")
    for item in done:
        print(f"skip-day: {item}", file=sys.stderr)
    c = f"-c {args.config}"
    print(
        "skip-day: an explicit gap from now on: a running downloader journals it within "
        f"{cfg.downloader.live_poll_interval_s:g}s (downloader.live_poll_interval_s) once it "
        "follows the live day, or at its next start, and the transformer moves past it; "
        f"`barstream rebuild {c}` builds the stores without it (exit 0 with --allow-skipped). "
        f"A good version later fills it: barstream backfill {c} --refetch --start {args.day} "
        f"--end {args.end or args.day} --symbols {args.symbol} --sides {args.side}",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_rebuild(args: argparse.Namespace) -> int:
    from barstream.rebuild import rebuild

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
        return EXIT_ERROR
    short = sum(m.bars or 0 for m in res.missing)
    held = (
        f" ({short:,} more not stored, {100 * short / (short + res.bars_1m):.0f} % short: below)"
        if short
        else ""
    )
    print(
        f"rebuild: {res.bars_1m:,} 1m bars{held} in {res.elapsed_s:.1f}s = "
        f"{res.bars_per_s:,.0f} bars/s; "
        + ", ".join(f"{n} {c:,}" for n, c in res.records.items())
        + " records committed",
        file=sys.stderr,
    )
    if res.aside is not None:
        print(f"rebuild: the old stores are in {res.aside} (delete when happy)", file=sys.stderr)
    if res.restarted:
        print(f"rebuild: restarted {', '.join(res.restarted)}", file=sys.stderr)
    return _report_missing("rebuild", res.missing, str(args.config), args.allow_skipped)


def _report_missing(
    command: str, items: list[missing.Missing], config: str | None, allow_skipped: bool
) -> int:
    """Print what the stores lack (each item and what to do); the exit code it means."""
    from barstream import missing

    if not items:
        return EXIT_OK
    bad = missing.failing(items, allow_skipped=allow_skipped)
    print(
        f"{command}: {'INCOMPLETE' if bad else 'complete but for the days skipped by the user'}"
        f": {missing.summary(items)}",
        file=sys.stderr,
    )
    for line in missing.lines(items, config):
        print(line)
    if not bad:
        return EXIT_OK
    accept = (
        " (--allow-skipped accepts the days skipped by the user)"
        if any(m.kind == missing.SKIPPED for m in bad)
        else ""
    )
    print(f"{command}: exit 1: {len(bad)} item(s) above{accept}", file=sys.stderr)
    return EXIT_ERROR


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from barstream.verify import plan, verify_store

    root = _data_root(args)
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
    if not args.no_recompute:
        from barstream.recompute import recompute

        # the configuration (when the stores are the configured ones): the resampler's
        # sessions, and the feature sets the feature stores are recomputed with
        conf = None if args.data_dir is not None else configs.load(args.config)
        again = recompute(root, None if conf is None else conf.resampler.sessions, config=conf)
        for f in again.faults:
            print(f"FAULT {f}")
        faults += len(again.faults)
        for why in again.skipped:
            print(f"verify: not recomputed: {why}", file=sys.stderr)
    print(
        f"verify: {stores} stores, {records:,} records under {root}: "
        + (f"{faults} fault(s)" if faults else "ok"),
        file=sys.stderr,
    )
    if faults:
        cfg = f" --config {args.config}" if args.data_dir is None else ""
        print(
            f"verify: repair: `barstream rebuild{cfg}` (stops the services supervisord "
            "runs, moves every store aside and recomputes it from the raw cache; a damaged "
            "raw body is first re-fetched with the backfill command its FAULT line names)",
            file=sys.stderr,
        )
    from barstream import missing

    config = None if args.data_dir is not None else str(args.config)
    code = _report_missing("verify", missing.scan(root), config, args.allow_skipped)
    return EXIT_ERROR if faults else code


def cmd_export(args: argparse.Namespace) -> int:
    from barstream import export

    root = _data_root(args)
    path = export.store_path(root, args.symbol, args.side, args.timeframe)
    try:
        start = export.parse_time_ms(args.start) if args.start else None
        end = export.parse_time_ms(args.end) if args.end else None
    except ValueError as e:
        raise ConfigError("--start/--end", args.start or args.end, str(e)) from None
    if args.format == "mt4" and not args.allow_utc:
        why = export.mt4_mismatch(export.store_meta(path))
        if why is not None:
            print(f"export: refused: {why}", file=sys.stderr)
            return EXIT_USAGE
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            print("export: parquet needs pyarrow (pip install pyarrow)", file=sys.stderr)
            return EXIT_USAGE
    records = export.read(path, start_ms=start, end_ms=end, provisional=args.provisional)
    out: Path | None = args.output
    if args.format == "parquet":
        out = out or Path(f"{args.symbol}-{args.side}-{args.timeframe}.parquet")
        export.write_parquet(records, out)
    elif out is None:
        if args.format == "csv":
            export.write_csv(records, sys.stdout)
        else:
            export.write_text(
                export.mt4_lines(records, args.timeframe, args.week_label), sys.stdout
            )
        sys.stdout.flush()  # a closed pipe shows here, before the summary
    else:
        with out.open("w", newline="") as f:
            if args.format == "csv":
                export.write_csv(records, f)
            else:
                export.write_text(export.mt4_lines(records, args.timeframe, args.week_label), f)
    where = "stdout" if out is None else str(out.resolve())
    print(f"export: wrote {len(records)} bars of {path} to {where}", file=sys.stderr)
    from barstream import lacking

    config = str(args.config) if args.data_dir is None else None
    return lacking.check_export(
        root, args.symbol, args.side, args.timeframe, start, end, config, args.allow_skipped
    )


def _with_port_offset(path: Path, offset: int | None, var_dir: Path) -> Path:
    """``path``, or with ``--port-offset N`` the derived file that sets
    ``pipeline.port_offset = N`` (``barstream.ports.offset_config``), said on stderr."""
    if offset is None:
        return path
    derived = ports.offset_config(path, offset, var_dir)
    print(
        f"barstream: every TCP port moved by {offset}; the services read {derived} "
        f"(give it as -c to status, history, tail …)",
        file=sys.stderr,
    )
    return derived


def _supervisor(args: argparse.Namespace, *, demo: bool = False) -> Supervisor:
    return Supervisor(
        args.config or configs.LIVE_CONFIG,
        args.var or default_var_dir(),
        demo=demo,
        events_port=args.events_port,
    )


def _data_root(args: argparse.Namespace) -> Path:
    """``--data-dir``, else the configuration's ``pipeline.data_dir`` (made absolute)."""
    if args.data_dir is not None:
        path: Path = args.data_dir
        return path
    return configs.data_root(configs.load(args.config))
