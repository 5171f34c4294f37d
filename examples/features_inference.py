"""A small, real inference loop on barstream's features.

1. fetch the last ``--train-bars`` closed bars of SYMBOL/TIMEFRAME joined with a feature set
   (``GatewayClient.history(..., features=SET)``);
2. fit an L2-regularised logistic regression (numpy only: Newton's method) that predicts
   the sign of the next bar's close-to-close return from a handful of feature columns
   (warm-up rows, where a column is still NaN, are dropped; flat next bars too);
3. stream closed bars with their features (``stream(..., closed_only=True, features=SET)``)
   and, for each new closed bar, print one line: the bar, P(next bar closes higher), and
   two latencies:

   - ``close_lag_s``: wall clock at the prediction minus the bar's close (its open time
     ``ts_ms`` + the timeframe's length) — end-to-end, from the market's bar close through
     the whole pipeline to the score. Under a simulated or replayed feed the bars' clock is
     not the wall clock and this number says so (it is then the clocks' offset);
   - ``recv_to_pred_ms``: from the stream handing the item over to the prediction (the
     model's own cost: feature vector, standardisation, dot product).

   A revision (``item.replaces > 0``: bars already scored were corrected upstream) is
   announced with a ``#`` line and the corrected bars are rescored (``rescore`` lines).

Output: predictions on stdout (``predict`` / ``rescore`` lines, ``key=value`` fields),
everything else on stderr. Exit 0 after ``--max-bars`` predictions (or ^C), 1 when the
gateway does not serve the feature topic, does not answer, or has too little history.

Run it against the demo (``barstream demo`` serves set "core" on 1m, 5m, 1h)::

    python examples/features_inference.py EUR-USD 1m --features core --max-bars 10
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from barstream.client import GatewayClient, GatewayError
from barstream.shared.record import FLAG_PROVISIONAL

DEFAULT_PUBLISH: Final = "tcp://127.0.0.1:7110"
DEFAULT_REQUESTS: Final = "tcp://127.0.0.1:7111"

#: Scale-free outputs of the demo's "core" set (config/demo.toml): oscillators and ratios
#: that mean the same at any price level. ``--columns`` picks others.
DEFAULT_COLUMNS: Final = (
    "returns_1.log",
    "rsi_14.value",
    "macd_12_26_9.hist",
    "bbands_20_2p0.pctb",
    "stoch_14_3.k",
    "cci_20_0p015",
    "zscore_20_1",
    "adx_14.adx",
)

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

FloatArray = npt.NDArray[np.float64]


# -- the model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """Logistic regression on standardised features: P(up) = σ(w · (x - mean) / std + b)."""

    columns: tuple[str, ...]
    mean: FloatArray
    std: FloatArray
    weights: FloatArray  # one per column, then the intercept

    def features(self, rows: np.ndarray) -> FloatArray:
        """The design matrix of ``rows`` (joined records): standardised columns and a 1."""
        x = np.column_stack([np.asarray(rows[c], np.float64) for c in self.columns])
        z = (x - self.mean) / self.std
        out: FloatArray = np.column_stack([z, np.ones(len(z))])
        return out

    def p_up(self, rows: np.ndarray) -> FloatArray:
        """P(the bar after each row closes higher); NaN where a feature is NaN (warm-up)."""
        return sigmoid(self.features(rows) @ self.weights)


def sigmoid(t: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * t))  # overflow-free σ
    return out


def fit_logistic(x: FloatArray, y: FloatArray, l2: float, iterations: int = 25) -> FloatArray:
    """Newton's method (IRLS) for L2-regularised logistic regression; the intercept (the
    last column of ``x``) is not penalised."""
    n, k = x.shape
    w = np.zeros(k)
    penalty = np.full(k, l2)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = sigmoid(x @ w)
        grad = x.T @ (p - y) / n + penalty * w
        hess = (x.T * (p * (1.0 - p))) @ x / n + np.diag(penalty) + 1e-9 * np.eye(k)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w


@dataclass(frozen=True)
class Fit:
    model: Model
    n_train: int
    n_test: int
    train_acc: float
    test_acc: float
    up_rate: float


def train(rows: np.ndarray, columns: Sequence[str], l2: float, test_frac: float = 0.2) -> Fit:
    """Fit on the history: row t's features → was close[t+1] > close[t]? Rows with a NaN
    feature (warm-up), the last row (no next bar yet) and flat next bars are left out. The
    last ``test_frac`` of the usable rows is held out for an honest accuracy, then the model
    is refitted on all of them."""
    x = np.column_stack([np.asarray(rows[c], np.float64) for c in columns])
    close = np.asarray(rows["close"], np.float64)
    nxt = np.diff(close)  # nxt[t] = close[t+1] - close[t]
    x = x[:-1]
    keep = np.isfinite(x).all(axis=1) & (nxt != 0)
    x, y = x[keep], (nxt[keep] > 0).astype(np.float64)
    if len(y) < 50:
        raise ValueError(
            f"{len(y)} usable training rows (of {len(rows)} bars): need at least 50 "
            "(more history, or columns with a shorter warm-up)"
        )
    n_test = max(1, int(len(y) * test_frac))

    def fitted(xs: FloatArray, ys: FloatArray) -> Model:
        mean = xs.mean(axis=0)
        std = xs.std(axis=0)
        std[std == 0] = 1.0
        design = np.column_stack([(xs - mean) / std, np.ones(len(xs))])
        return Model(tuple(columns), mean, std, fit_logistic(design, ys, l2))

    def accuracy(m: Model, xs: FloatArray, ys: FloatArray) -> float:
        z = np.column_stack([(xs - m.mean) / m.std, np.ones(len(xs))])
        return float(np.mean((sigmoid(z @ m.weights) > 0.5) == (ys > 0.5)))

    head = fitted(x[:-n_test], y[:-n_test])
    test_acc = accuracy(head, x[-n_test:], y[-n_test:])
    model = fitted(x, y)
    return Fit(model, len(y) - n_test, n_test, accuracy(model, x, y), test_acc, float(np.mean(y)))


# -- time -------------------------------------------------------------------------------


def timeframe_ms(tf: str) -> int | None:
    """The length of an m/h/d/W timeframe in ms; None for months and years (calendar)."""
    units = {"m": 60_000, "h": 3_600_000, "d": 86_400_000, "W": 7 * 86_400_000}
    count, unit = tf[:-1], tf[-1:]
    if not count.isdigit() or int(count) < 1 or unit not in (*units, "M", "Y"):
        raise ValueError(f"not a timeframe: {tf!r} (e.g. 1m, 5m, 1h, 1d)")
    return int(count) * units[unit] if unit in units else None


def close_ms(ts_ms: int, tf: str) -> int:
    """When the bar opening at ``ts_ms`` closes: the open time + the timeframe's length
    (months and years: the calendar's next boundary, UTC)."""
    length = timeframe_ms(tf)
    if length is not None:
        return ts_ms + length
    count, unit = int(tf[:-1]), tf[-1]
    t = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    months = count * (12 if unit == "Y" else 1)
    year, month0 = divmod(t.month - 1 + months, 12)
    end = t.replace(year=t.year + year, month=month0 + 1, day=1)
    return calendar.timegm(end.timetuple()) * 1000


def utc(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the loop ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="features_inference.py",
        description="Train a small numpy logistic regression on a symbol's bars with "
        "features from a barstream gateway, then score every newly closed bar as it "
        "streams in, with latencies. Predictions on stdout, the rest on stderr.",
    )
    p.add_argument("symbol", nargs="?", default="EUR-USD", help="default EUR-USD")
    p.add_argument("timeframe", nargs="?", default="1m", help="default 1m")
    p.add_argument("--side", default="BID", choices=("BID", "ASK"))
    p.add_argument("--features", default="core", help="feature set name (default core)")
    p.add_argument(
        "--columns",
        help="comma-separated feature outputs the model uses "
        f"(default: {','.join(DEFAULT_COLUMNS)})",
    )
    p.add_argument("--train-bars", type=int, default=5000, help="history bars to fit on")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty (default 1e-3)")
    p.add_argument("--max-bars", type=int, default=0, help="stop after N predictions (0: never)")
    p.add_argument(
        "--stream-timeout",
        type=float,
        default=None,
        help="exit 1 when no bar comes for this many seconds (default: wait)",
    )
    p.add_argument("--config", "-c", type=Path, help="pipeline configuration (its gateway)")
    p.add_argument("--publish", default=None, help=f"publish endpoint ({DEFAULT_PUBLISH})")
    p.add_argument("--requests", default=None, help=f"request endpoint ({DEFAULT_REQUESTS})")
    p.add_argument("--timeout", type=float, default=10.0, help="request timeout, seconds")
    args = p.parse_args(argv)
    if args.train_bars < 60 or args.max_bars < 0:
        p.error("--train-bars must be >= 60 and --max-bars >= 0")
    try:
        timeframe_ms(args.timeframe)
    except ValueError as e:
        p.error(str(e))
    return args


def connect(args: argparse.Namespace) -> GatewayClient:
    if args.config is not None:
        from barstream.shared import config

        client = GatewayClient.from_config(config.load(args.config), timeout_s=args.timeout)
        if args.publish is None and args.requests is None:
            return client
        publish, requests = args.publish or client.publish, args.requests or client.requests
        client.close()
        return GatewayClient(publish, requests, timeout_s=args.timeout)
    return GatewayClient(
        args.publish or DEFAULT_PUBLISH, args.requests or DEFAULT_REQUESTS, timeout_s=args.timeout
    )


def served_sets(gw: GatewayClient, symbol: str, side: str, timeframe: str) -> list[str]:
    """The feature topics the gateway serves for this symbol/side/timeframe."""
    prefix = f"{symbol}/{side}/{timeframe}."
    return sorted(t.topic for t in gw.list_topics(prefix) if t.features is not None)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    tf = args.timeframe
    topic = f"{args.symbol}/{args.side}/{tf}.{args.features}"
    with connect(args) as gw:
        try:
            rows = gw.history(
                args.symbol, tf, side=args.side, last=args.train_bars, features=args.features
            )
        except GatewayError as e:
            if e.code != "unknown-topic":
                raise
            others = served_sets(gw, args.symbol, args.side, tf)
            log(f"error: the gateway at {gw.requests} serves no feature topic {topic}")
            log(
                f"  feature topics it serves for {args.symbol}/{args.side}/{tf}: {others or 'none'}"
            )
            return EXIT_ERROR
        names = rows.dtype.names or ()
        columns = args.columns.split(",") if args.columns else list(DEFAULT_COLUMNS)
        missing = [c for c in columns if c not in names]
        if missing:
            log(f"error: {topic} has no output {missing}; it has {list(names[7:])}")
            return EXIT_USAGE
        closed = rows[(np.asarray(rows["flags"]) & FLAG_PROVISIONAL) == 0]
        try:
            fit = train(closed, columns, args.l2)
        except ValueError as e:
            log(f"error: {topic}: {e}")
            return EXIT_ERROR
        log(
            f"trained on {topic}: {fit.n_train} + {fit.n_test} held-out rows of "
            f"{len(closed)} bars ({utc(int(closed['ts_ms'][0]))} .. "
            f"{utc(int(closed['ts_ms'][-1]))}), up rate {fit.up_rate:.3f}, "
            f"accuracy train {fit.train_acc:.3f} held-out {fit.test_acc:.3f}"
        )
        return infer(gw, args, fit.model, int(closed["ts_ms"][-1]))


def infer(gw: GatewayClient, args: argparse.Namespace, model: Model, trained_to: int) -> int:
    """Score each closed bar newer than ``trained_to`` as it arrives; rescore revised ones."""
    tf = args.timeframe
    last_ts = trained_to  # the newest bar scored (or trained on)
    predictions = 0
    warned_clock = False
    stream = gw.stream(
        args.symbol,
        tf,
        args.side,
        history=3,  # a bar that closed between the history request and this stream
        closed_only=True,
        timeout_s=args.stream_timeout,
        features=args.features,
    )
    for item in stream:
        received = time.perf_counter()
        ts = np.asarray(item.records["ts_ms"], np.int64)
        if item.replaces > 0 and item.kind != "history":
            log(
                f"# revision ({item.kind}): {item.replaces} bar(s) from offset "
                f"{item.start_offset} replaced; rescoring"
            )
            todo = np.ones(len(ts), bool)  # the corrected bars and any new ones after them
        else:
            todo = ts > last_ts
        if not todo.any():
            continue
        rows = item.records[todo]
        p_up = model.p_up(rows)
        done = time.perf_counter()
        wall_ms = time.time() * 1000
        for row, p in zip(rows, p_up.tolist(), strict=True):
            bar_ts = int(row["ts_ms"])
            new = bar_ts > last_ts
            lag_s = (wall_ms - close_ms(bar_ts, tf)) / 1000
            if abs(lag_s) > 86_400 and not warned_clock:
                warned_clock = True
                log(
                    f"note: bar {utc(bar_ts)} closed {abs(lag_s) / 86_400:.1f} days "
                    f"{'before' if lag_s > 0 else 'after'} the wall clock: the feed runs on a "
                    "simulated or replayed clock, and close_lag_s is mostly the clocks' offset"
                )
            pred = "nan" if p != p else ("UP" if p > 0.5 else "DOWN")
            print(
                f"{'predict' if new else 'rescore'} bar={utc(bar_ts)} "
                f"close={float(row['close']):.5f} pred={pred} p_up={p:.4f} "
                f"close_lag_s={lag_s:.3f} recv_to_pred_ms={(done - received) * 1000:.3f}",
                flush=True,
            )
            if new:
                last_ts = bar_ts
                predictions += 1
                if args.max_bars and predictions >= args.max_bars:
                    return EXIT_OK
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except TimeoutError as e:
        log(f"error: {e}")
        return EXIT_ERROR
    except GatewayError as e:
        log(f"error: the gateway refused: {e}")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
