"""``python -m bench``: every benchmark module's ``run()``, one table."""

from __future__ import annotations

import importlib
import pkgutil

import bench


def main() -> None:
    rows: list[tuple[str, float, str]] = []
    for info in sorted(pkgutil.iter_modules(bench.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        run = getattr(module, "run", None)
        if callable(run):
            rows.extend(run())
    bench.print_table(rows)


if __name__ == "__main__":
    main()
