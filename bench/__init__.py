"""Benchmarks. Each module has ``run() -> list[tuple[name, value, unit]]`` and runs alone
with ``python -m bench.<module>``; ``python -m bench`` runs them all and prints one table."""

from __future__ import annotations

from collections.abc import Iterable


def print_table(rows: Iterable[tuple[str, float, str]]) -> None:
    rows = list(rows)
    width = max((len(name) for name, _, _ in rows), default=10)
    print(f"{'benchmark':<{width}}  {'value':>14}  unit")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {_num(value):>14}  {unit}")


def _num(value: float) -> str:
    """Thousands separated when large, three significant decimals when small."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"
