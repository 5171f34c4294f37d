"""Features engine benchmark: the "core" set (config/demo.toml) over 20 years of EUR-USD 1m.

- series: bench.cascade's 20-year 1m series (real HistData EURUSD 2018–2019 tiled ten times,
  ~7.45 M minutes, seeded integer volumes; a random walk when the real data is absent),
  cached in bench/out/.
- batch, one core (numba compiled beforehand: a one-off per build, cached in __pycache__):
  ``engine.compute_blocks`` of every column of the set over the whole series (65,536 bars a
  block, buffers reused); the same + ``layout.pack`` into a reused block of 64-byte records
  (the path a service writing a store takes); and ``engine.compute`` into new whole arrays
  (2.6 GB of fresh pages: on this sandbox a page fault costs more than a bar's arithmetic).
  Target: <= 3 s.
- incremental: ``Stream.apply`` of one new closed bar on top of the 20-year state
  (``state_at`` from the stored row), and ``Stream.peek`` of a provisional bar; µs per bar
  for the whole set (one topic = one symbol, side, timeframe, set). Target: <= 50 µs.

    python -m bench.features
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from barstream.services.features import layout
from barstream.services.features.engine import Program, compute, compute_blocks, state_at
from barstream.services.features.spec import FeatureSet, feature_set
from barstream.shared import config
from bench.cascade import _best, load_series

REPO = Path(__file__).resolve().parent.parent
INCREMENTAL_BARS = 5_000


def core_set() -> FeatureSet:
    cfg = config.load(REPO / "config" / "demo.toml")
    core = next(f for f in cfg.features if f.name == "core")
    items = [{"kind": i.kind, "params": i.params, "name": i.name} for i in core.indicators]
    return feature_set(core.name, core.timeframes, items)


def incremental(prog: Program, m1: np.ndarray) -> tuple[float, float]:
    """µs of CPU per bar: apply (commit) and peek (provisional), over the last bars."""
    n = len(m1) - INCREMENTAL_BARS
    row = None
    for _, feats in compute_blocks(prog, m1[:n]):
        row = feats.values[:, -1].copy()  # the stored row n - 1 at the end
    s = state_at(prog, m1, row, n)
    bars = m1[n:]
    for i in range(50):  # warm the buffers and caches
        s.peek(bars[i])
    c0 = time.process_time()
    for i in range(len(bars)):
        s.peek(bars[i])
    t_peek = time.process_time() - c0
    c0 = time.process_time()
    for i in range(len(bars)):
        s.apply(bars[i : i + 1])
    t_apply = time.process_time() - c0
    return t_apply / len(bars) * 1e6, t_peek / len(bars) * 1e6


def blocks(prog: Program, m1: np.ndarray, block: int = 65_536, pack: bool = False) -> int:
    """The whole series in blocks (optionally packed into one reused record buffer)."""
    buf = np.empty(block * prog.fs.n_groups, layout.FEATURE_DTYPE)
    made = 0
    for _, feats in compute_blocks(prog, m1, block=block):
        made += len(layout.pack(prog.fs, feats, out=buf)) if pack else len(feats)
    return made


def run() -> list[tuple[str, float, str]]:
    m1, source = load_series()
    fs = core_set()
    prog = Program.of(fs)
    compute(prog, m1[:1000])  # compile (or load the cache) outside the timings
    wall_b, cpu_b = _best(lambda: blocks(prog, m1), repeat=1)
    wall_p, cpu_p = _best(lambda: blocks(prog, m1, pack=True), repeat=1)
    wall, cpu = _best(lambda: compute(prog, m1), repeat=1)
    apply_us, peek_us = incremental(prog, m1)
    name = f"features core ({len(fs.columns)} columns, {len(fs.indicators)} indicators)"
    return [
        (f"{name}: batch {len(m1) / 1e6:.2f} M 1m bars in blocks, wall", wall_b * 1e3, "ms"),
        (f"{name}: batch in blocks, cpu", cpu_b * 1e3, "ms"),
        (f"{name}: batch in blocks + pack to records, wall", wall_p * 1e3, "ms"),
        (f"{name}: batch in blocks + pack to records, cpu", cpu_p * 1e3, "ms"),
        (f"{name}: batch into new whole arrays (compute), wall", wall * 1e3, "ms"),
        (f"{name}: batch into new whole arrays (compute), cpu", cpu * 1e3, "ms"),
        (f"{name}: incremental apply, one bar, cpu", apply_us, "µs"),
        (f"{name}: provisional peek, one bar, cpu", peek_us, "µs"),
        (f"features series: {source}", len(m1), "records"),
    ]


if __name__ == "__main__":
    import bench

    bench.print_table(run())
