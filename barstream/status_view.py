"""The text of ``barstream status`` (the facts and their judgement are in
``barstream.status``), in two sizes.

The service table is followed by the health line (``health: degraded: downloader degraded
(gap); …``: the worst state, then every service that is not healthy with its reasons).

By default one screen whatever the number of instruments: one line per service, one line
naming the symbols, sides and timeframes covered, then only what needs attention — every
item while they fit ``ATTENTION_ROWS`` rows, else one row per service and kind — and the
faults, capped at ``FAULTS_SHOWN`` lines. ``full=True`` (``--all``) adds every store,
grouped by service and sorted by symbol, side and timeframe duration (1m … 1Y), then the
upstream streams a service is behind on (a table of their own, never rows among its
stores), and lists everything uncapped. ``streams=False`` (the demo's screen) keeps only
the service table, errors and faults.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from barstream.shared.config import SIDES
from barstream.status import (
    Attention,
    ServiceStatus,
    attention,
    overall_health,
    split_key,
    timeframe_order,
)

#: Rows of the "needs attention" list in the default view (``--all`` shows every row).
ATTENTION_ROWS: Final = 15
#: Fault lines in the default view.
FAULTS_SHOWN: Final = 5


def render(statuses: list[ServiceStatus], *, streams: bool = True, full: bool = False) -> str:
    """The status text (module docstring): the service table; with ``streams`` the
    overview and what needs attention; ``full`` adds every store and lifts the caps."""
    lines = _service_table(statuses)
    lines += _health_lines(statuses)
    if streams:
        lines += ["", _overview(statuses)]
        if full:
            for s in statuses:
                lines += _store_table(s)
        lines += ["", *_attention_table(attention(statuses), None if full else ATTENTION_ROWS)]
    errors = [(s.name, k, v) for s in statuses for k, v in sorted(s.errors.items())]
    if errors:
        lines.append("")
        lines.append("errors: " + ", ".join(f"{n} {k}={v:.0f}" for n, k, v in errors))
    faults = [f for s in statuses for f in s.faults]
    lines.append("")
    if not faults:
        lines.append("faults: none")
    else:
        shown = faults if full else faults[:FAULTS_SHOWN]
        lines.append(f"faults: {len(faults)}")
        lines += [f"  {f}" for f in shown]
        if len(shown) < len(faults):
            lines.append(f"  … {len(faults) - len(shown)} more (barstream status --all)")
    return "\n".join(lines)


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 1 or x == 0 else f"{x:.2f}"


def _service_table(statuses: list[ServiceStatus]) -> list[str]:
    lines = [
        f"{'service':<12} {'state':<5} {'supervisor':<9} {'in':>11} {'written':>11} "
        f"{'out':>11} {'lag_s':>6} {'behind':>8} {'stores':>6} {'records':>12}  newest bar (UTC)"
    ]
    for s in statuses:
        lag = "-" if s.feed_lag_seconds is None else f"{s.feed_lag_seconds:.1f}"
        lines.append(
            f"{s.name:<12} {'up' if s.up else 'DOWN':<5} {s.supervisor_state or '-':<9} "
            f"{_num(s.records_in):>11} {_num(s.records_written):>11} {_num(s.records_out):>11} "
            f"{lag:>6} {_num(s.behind_records):>8} {len(s.streams):>6} "
            f"{sum(x.length for x in s.streams.values()):>12,}  {_when(s.newest_bar_ms)}"
        )
    return lines


#: Width the health line wraps at.
HEALTH_WIDTH: Final = 120


def _health_lines(statuses: list[ServiceStatus]) -> list[str]:
    """``health: STATE`` (the worst), then each service that is not healthy with its
    reasons, wrapped at ``HEALTH_WIDTH``."""
    worst = overall_health(statuses)
    parts = [
        f"{s.name} {s.health} ({', '.join(s.reasons) or '?'})"
        for s in statuses
        if s.health and s.health != "healthy"
    ]
    lines = [f"health: {worst}" + (": " if parts else "")]
    for i, part in enumerate(parts):
        sep = "" if i == 0 else "; "
        if len(lines[-1]) + len(sep) + len(part) > HEALTH_WIDTH and i:
            lines[-1] += ";"
            lines.append("  " + part)
        else:
            lines[-1] += sep + part
    return lines


def _overview(statuses: list[ServiceStatus]) -> str:
    """One line: which symbols, sides and timeframes the stores cover, and how many."""
    keys = [split_key(k) for s in statuses for k in s.streams]
    if not keys:
        return "streams: none"
    symbols = sorted({k[0] for k in keys})
    sides = sorted({k[1] for k in keys if k[1]}, key=lambda x: SIDES.index(x) if x in SIDES else 9)
    tf_parts = [k[2].partition(".") for k in keys]
    tfs = sorted({tf for tf, _, _ in tf_parts if timeframe_order(tf)[0]}, key=timeframe_order)
    sets = sorted({name for tf, _, name in tf_parts if name and timeframe_order(tf)[0]})
    names = f" ({', '.join(symbols)})" if len(symbols) <= 4 else ""
    return (
        f"streams: {len(symbols)} symbol(s){names} × {len(sides)} side(s) ({', '.join(sides)}); "
        f"timeframes {' '.join(tfs) or '-'}"
        + (f"; feature sets {' '.join(sets)}" if sets else "")
        + f"; {len(keys):,} stores"
    )


def _store_table(s: ServiceStatus) -> list[str]:
    """Every store of one service, then the upstream streams it is behind on (if any)."""
    lines = []
    pad = " " * len(s.name)
    if s.streams:
        lines += ["", f"{s.name}: {'stream':<24} {'length':>10} {'committed':>10}  last bar (UTC)"]
        for key, x in s.streams.items():
            lines.append(
                f"{pad}  {key:<24} {x.length:>10,} {x.committed:>10,}  {_when(x.last_bar_ms)}"
            )
    behind = {k: n for k, n in s.upstream_lag.items() if n > 0}
    if behind:
        lines += ["", f"{s.name}: behind its upstream on {len(behind)} stream(s), records:"]
        lines += [f"{pad}  {k:<24} {n:>10,.0f}" for k, n in behind.items()]
    return lines


def _attention_table(items: list[Attention], limit: int | None) -> list[str]:
    """Every item while they fit ``limit`` rows; else one row per service and kind."""
    if not items:
        return ["needs attention: none"]
    if limit is None or len(items) <= limit:
        lines = [
            f"needs attention: {len(items)}",
            f"  {'service':<12} {'stream':<24} {'length':>10} {'committed':>10}  "
            f"{'last bar (UTC)':<16}  why",
        ]
        for a in items:
            x = a.store
            store = (
                f"{x.length:>10,} {x.committed:>10,}  {_when(x.last_bar_ms):<16}"
                if x is not None
                else f"{'':>10} {'':>10}  {'':<16}"
            )
            lines.append(f"  {a.service:<12} {a.stream or '(service)':<24} {store}  {a.why}")
        return lines
    groups: dict[tuple[str, str], list[Attention]] = {}
    for a in items:
        groups.setdefault((a.service, a.kind), []).append(a)
    lines = [f"needs attention: {len(items)}, by service and kind (--all lists each)"]
    for (service, kind), group in list(groups.items())[:limit]:
        if not group[0].stream:  # a service-level item: one of its kind per service
            lines.append(f"  {service:<12} {kind:<8} {group[0].why}")
            continue
        names = ", ".join(a.stream for a in group[:3]) + (", …" if len(group) > 3 else "")
        lines.append(f"  {service:<12} {kind:<8} {len(group):>6,} stores: {names}")
    if len(groups) > limit:
        lines.append(f"  … {len(groups) - limit} more groups: barstream status --all")
    return lines
