"""``barstream tail`` and ``barstream history``: the gateway client on the command line.

The main CLI mounts them with ``add_tail_parser(subparsers)`` / ``add_history_parser(subparsers)``
(each sets ``func`` to a callable taking the parsed namespace and returning an exit code);
``tail_main(argv)`` / ``history_main(argv)`` run them standalone.

Exit codes: 0 done, 1 the gateway refused or did not answer, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from barstream.export import csv_lines, num, write_csv
from barstream.services.gateway.client import (
    DEFAULT_PUBLISH,
    DEFAULT_REQUESTS,
    GatewayClient,
    to_pandas,
)
from barstream.services.gateway.follower import BarUpdate
from barstream.services.gateway.joined import BAR_FIELDS
from barstream.shared.errors import EXIT_ERROR as EXIT_ERROR  # the exit codes it documents
from barstream.shared.errors import EXIT_OK as EXIT_OK
from barstream.shared.errors import EXIT_USAGE as EXIT_USAGE
from barstream.shared.errors import BarstreamError, GatewayError
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED

#: Interrupted by Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, help="pipeline configuration (gateway endpoints)")
    p.add_argument("--publish", help=f"gateway publish endpoint (default {DEFAULT_PUBLISH})")
    p.add_argument("--requests", help=f"gateway request endpoint (default {DEFAULT_REQUESTS})")
    p.add_argument("--timeout", type=float, default=10.0, help="request timeout, seconds")


def _feature_args(p: argparse.ArgumentParser, how: str) -> None:
    p.add_argument(
        "--features",
        metavar="SET",
        help=f"a configured feature set (e.g. core): each bar with the set's outputs, {how} "
        "(the feature topic SYMBOL/SIDE/TF.SET; nan while an output warms up)",
    )
    p.add_argument(
        "--columns",
        metavar="A,B",
        help="with --features: only these outputs (comma-separated, e.g. rsi_14.value,sma_20)",
    )


def feature_columns(records: np.ndarray, columns: str | None) -> list[str]:
    """The feature outputs of joined ``records`` to show: all of them, or the ``--columns``
    ones (ValueError naming the unknown ones and what the set has)."""
    outputs = list((records.dtype.names or ())[len(BAR_FIELDS) :])
    if not columns:
        return outputs
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in outputs]
    if unknown:
        raise ValueError(f"no output {', '.join(unknown)} in the set; it has {', '.join(outputs)}")
    return wanted


def add_tail_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "tail",
        help="print live bars of one symbol/timeframe",
        description="Print the last bars, then every bar update as it is published. "
        "Provisional (still open) bars are marked '~', revised bars 'R'. With --features SET, "
        "each bar goes on with its feature outputs as name=value.",
    )
    p.add_argument("symbol", help="e.g. EUR-USD")
    p.add_argument("timeframe", help="e.g. 1m, 1h, 1d")
    p.add_argument("--side", default="BID", choices=("BID", "ASK"))
    p.add_argument("--history", "-n", type=int, default=10, help="bars to print first")
    p.add_argument("--closed-only", action="store_true", help="only closed bars, each once")
    p.add_argument("--count", type=int, default=0, help="stop after this many updates (0: never)")
    _feature_args(p, "after its OHLCV, as name=value")
    _endpoint_args(p)
    p.set_defaults(func=run_tail)
    return p


def add_history_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "history",
        help="export bars of one symbol/timeframe",
        description="Fetch bars with START <= open time < END (UTC; ISO dates or times, or ms).",
    )
    p.add_argument("symbol", help="e.g. EUR-USD")
    p.add_argument("timeframe", help="e.g. 1m, 1h, 1d")
    p.add_argument("--side", default="BID", choices=("BID", "ASK"))
    p.add_argument("--start", help="first bar time, e.g. 2025-01-01 (default: the first bar)")
    p.add_argument("--end", help="end, exclusive (default: after the last bar)")
    p.add_argument("--format", choices=("csv", "parquet"), default="csv")
    p.add_argument("--output", "-o", type=Path, help="file to write (default: stdout; csv only)")
    _feature_args(p, "as extra columns after the bar's")
    _endpoint_args(p)
    p.set_defaults(func=run_history)
    return p


def _client(args: argparse.Namespace) -> GatewayClient:
    publish, requests = DEFAULT_PUBLISH, DEFAULT_REQUESTS
    if args.config is not None:
        from barstream.shared import config as config_mod

        cfg = config_mod.load(args.config)
        publish = config_mod.connect_address(cfg.gateway.publish)
        requests = config_mod.connect_address(cfg.gateway.requests)
    return GatewayClient(args.publish or publish, args.requests or requests, timeout_s=args.timeout)


def answered_by(client: GatewayClient, args: argparse.Namespace) -> str:
    """Which gateway answers: its instance id, its request endpoint and where that came
    from (a command run without ``-c`` talks to whatever holds the default ports)."""
    where = (
        f"config {args.config}"
        if args.config is not None
        else "--requests"
        if args.requests
        else "the default endpoint: no -c given"
    )
    instance = client.status().instance
    return f"gateway {instance} at {client.requests} ({where})"


def _time(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def format_bar(record: np.void | np.ndarray, offset: int) -> str:
    """One line per bar: offset, UTC time, OHLCV, and a mark (~ provisional, R revised)."""
    ts = dt.datetime.fromtimestamp(int(record["ts_ms"]) / 1000, dt.UTC)
    flags = int(record["flags"])
    mark = ("~" if flags & FLAG_PROVISIONAL else " ") + ("R" if flags & FLAG_REVISED else " ")
    return (
        f"{offset:>9} {ts:%Y-%m-%d %H:%M} {mark} "
        f"o={float(record['open']):.5f} h={float(record['high']):.5f} "
        f"l={float(record['low']):.5f} c={float(record['close']):.5f} "
        f"v={float(record['volume']):g}"
    )


def format_features(record: np.void | np.ndarray, columns: Sequence[str]) -> str:
    """`` name=value`` for each feature output of a joined row (``nan`` while warming up)."""
    return "".join(f" {c}={float(record[c]):.6g}" for c in columns)


def print_update(item: BarUpdate, out: TextIO, columns: Sequence[str] | None = None) -> None:
    """The lines of one item; ``columns``: the feature outputs to append (joined rows)."""
    if item.replaces:
        out.write(
            f"# {item.topic}: from offset {item.start_offset} ({item.replaces} bars replaced)\n"
        )
    for i, record in enumerate(item.records):
        extra = format_features(record, columns) if columns else ""
        out.write(format_bar(record, item.start_offset + i) + extra + "\n")
    out.flush()


def run_tail(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    if args.history < 0:
        print("tail: --history must be >= 0", file=sys.stderr)
        return EXIT_USAGE
    if args.columns and not args.features:
        print("tail: --columns needs --features SET", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _client(args) as client:
            print(f"tail: following {answered_by(client, args)}", file=sys.stderr)
            from barstream import lacking  # a held stream or gap of it: on stderr

            lacking.warn_tail(args.config, args.symbol, args.side, args.timeframe)
            updates = 0
            columns: list[str] | None = None
            for item in client.stream(
                args.symbol,
                args.timeframe,
                args.side,
                args.history,
                args.closed_only,
                features=args.features,
            ):
                if args.features and columns is None:
                    try:
                        columns = feature_columns(item.records, args.columns)
                    except ValueError as e:
                        print(f"tail: --columns: {e}", file=sys.stderr)
                        return EXIT_USAGE
                print_update(item, out, columns)
                if item.kind != "history":
                    updates += 1
                if args.count and updates >= args.count:
                    return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except (BarstreamError, TimeoutError) as e:
        print(f"tail: {e}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def run_history(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out  # looked up now: tests replace sys.stdout
    if args.format == "parquet" and args.output is None:
        print("history: --format parquet needs --output FILE", file=sys.stderr)
        return EXIT_USAGE
    if args.columns and not args.features:
        print("history: --columns needs --features SET", file=sys.stderr)
        return EXIT_USAGE
    try:
        with _client(args) as client:
            records = client.history(
                args.symbol,
                args.timeframe,
                _time(args.start),
                _time(args.end),
                args.side,
                features=args.features,
            )
            source = answered_by(client, args)
    except ValueError as e:
        print(f"history: bad --start/--end: {e}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as e:
        print(f"history: {e}", file=sys.stderr)
        return EXIT_USAGE if e.code in ("unknown-topic", "bad-range") else EXIT_ERROR
    except (BarstreamError, TimeoutError) as e:
        print(f"history: {e}", file=sys.stderr)
        return EXIT_ERROR
    try:
        columns = feature_columns(records, args.columns) if args.features else []
    except ValueError as e:
        print(f"history: --columns: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.format == "parquet":
        frame = to_pandas(records)
        for c in columns:
            frame[c] = np.asarray(records[c])
        frame.index = frame.index.strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            frame.to_parquet(args.output)
        except ImportError as e:
            print(f"history: parquet needs pyarrow: {e}", file=sys.stderr)
            return EXIT_ERROR
    elif args.output is None:
        write_history_csv(records, columns, out)
        out.flush()
    else:
        with args.output.open("w", newline="") as f:
            write_history_csv(records, columns, f)
    where = "stdout" if args.output is None else str(args.output.resolve())
    print(f"history: wrote {len(records)} bars to {where}, from {source}", file=sys.stderr)
    return EXIT_OK


def write_history_csv(records: np.ndarray, columns: Sequence[str], out: TextIO) -> None:
    """The one CSV format (barstream.export), as `export` writes it; with feature
    ``columns``, each line goes on with them (shortest round-trip floats, ``nan`` while
    an output warms up)."""
    if not columns:
        write_csv(records, out)
        return
    values = [np.asarray(records[c]).tolist() for c in columns]
    for i, line in enumerate(csv_lines(records)):
        tail = ",".join(columns) if i == 0 else ",".join(num(v[i - 1]) for v in values)
        out.write(f"{line[:-1]},{tail}\n")


def _standalone(add: Any, argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="barstream")
    add(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` left: exit quietly (barstream.cli.stdout_closed)
        from barstream.cli import stdout_closed

        return stdout_closed()
    return code


def tail_main(argv: Sequence[str] | None = None) -> int:
    """``barstream tail SYMBOL TIMEFRAME ...`` standalone (argv excludes the word ``tail``)."""
    return _standalone(add_tail_parser, ["tail", *(sys.argv[1:] if argv is None else argv)])


def history_main(argv: Sequence[str] | None = None) -> int:
    """``barstream history SYMBOL TIMEFRAME ...`` standalone (argv excludes ``history``)."""
    return _standalone(add_history_parser, ["history", *(sys.argv[1:] if argv is None else argv)])
