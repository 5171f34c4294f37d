"""The universe benchmark: N instrument-sides × Y years through the real service processes.

For each N the raw cache holds N instrument-sides (``config/universe.toml``'s instruments in
``ORDER``, both sides: N = 2 is EUR-USD BID and ASK, N = 8 four instruments of four kinds) of
days in the JSON API's exact format, made from the real HistData series by
``barstream.fake.universe.UniverseGenerator`` (re-based per instrument with its point size,
index sessions with a daily break, crypto trading on weekends); generated once into
``bench/out/`` (gitignored). Each run starts the five services over ipc:// in drain mode —
downloader (``cache_only``) → transformer → aggregator → resampler (1m + 5m … 1Y) → gateway —
and measures, from the first process start until the gateway's checkpoint covers every
record the resampler committed (every store of every stage committed):

- wall seconds, and CPU seconds per service (``os.wait4``);
- peak RSS per service, split into anonymous and file-backed (``/proc/PID/status``
  ``RssAnon`` / ``RssFile``, sampled every 0.1 s);
- bytes on disk of every service's stores (allocated blocks; the raw cache aside);
- the marginal wall cost per added instrument-side, from N = 1 to each N.

The stores are checked after each run: every resampler store of every stream equals
``resample_all`` over the aggregator's 1m store, and the gateway's replicas equal the
resampler's, byte for byte.

    python -m bench.universe                          # N = 1, 2, 4 over 2018-2019 (make bench)
    python -m bench.universe --years 20 --n 1,2,4,8,16   # the issue's table (long)
    python -m bench.universe --years 20 --n 84           # the full universe, both sides
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.rebuild import OUT, REPO, TIMEFRAMES, _wait_all, check_exits, reap

STAGES = ("downloader", "transformer", "aggregator", "resampler", "gateway")
#: Instruments in the order N takes them: kinds mixed early (forex, metal, index, crypto,
#: commodity), then the rest of config/universe.toml.
ORDER = (
    "EUR-USD", "USD-JPY", "XAU-USD", "USA500.IDX-USD", "BTC-USD", "GBP-USD", "DEU.IDX-EUR",
    "BRENT.CMD-USD",
)  # fmt: skip
DEFAULT_N = (1, 2, 4)
TIMEOUT_S = 3600.0


@dataclass
class Run:
    n: int
    years: int
    wall_s: float
    bars_1m: int
    cpu_s: dict[str, float]
    rss_anon: dict[str, int]  # bytes, peak
    rss_file: dict[str, int]
    disk_bytes: dict[str, int] = field(default_factory=dict)


def instruments() -> list[str]:
    from barstream.shared import config as config_mod

    symbols = config_mod.load(REPO / "config" / "universe.toml").pipeline.symbols
    return [*ORDER, *(s for s in symbols if s not in ORDER)]


def selection(n: int) -> tuple[list[str], list[str]]:
    """(symbols, sides) of N instrument-sides: N = 1 is one BID series, else N/2 × BID, ASK."""
    if n == 1:
        return instruments()[:1], ["BID"]
    if n % 2:
        raise SystemExit(f"--n {n}: an instrument-side count is 1 or even (both sides)")
    return instruments()[: n // 2], ["BID", "ASK"]


def span(years: int) -> tuple[dt.date, dt.date]:
    """``years`` whole years ending 2019-12-31 (the HistData years are 2018 and 2019)."""
    return dt.date(2020 - years, 1, 1), dt.date(2019, 12, 31)


def ensure_cache(symbols: list[str], sides: list[str], years: int) -> tuple[Path, float]:
    """One raw cache per (instrument-side, years), generated once; returns a root that holds
    exactly the selection (symlinks) and the seconds spent generating."""
    from barstream import paths
    from barstream.fake.cache import generate_cache
    from barstream.fake.universe import UniverseGenerator

    first, last = span(years)
    gen = UniverseGenerator(paths.real_data_dir() / "histdata-m1")
    spent = 0.0
    for sym in symbols:
        for side in sides:
            root = OUT / f"universe-{years}y" / "all" / sym / side
            if (root / "COMPLETE").exists():
                continue
            tmp = root.with_name(root.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            began = time.perf_counter()
            generate_cache(tmp, sym, side, first, last, generator=gen, durable=False)
            (tmp / "COMPLETE").write_text("done\n")
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
            spent += time.perf_counter() - began
            print(f"generated {sym}/{side} {first}..{last} in {spent:.1f} s", file=sys.stderr)
    return OUT / f"universe-{years}y" / "all", spent


def write_config(data: Path, ipc: Path, symbols: list[str], sides: list[str], years: int) -> Path:
    first, last = span(years)
    lines = [
        "[pipeline]",
        f'data_dir = "{data}"',
        f"symbols = {json.dumps(symbols)}",
        f"sides = {json.dumps(sides)}",
        f"start_date = {first.isoformat()}",
        "",
        "[downloader]",
        "cache_only = true",
        f"end_date = {last.isoformat()}",
        "",
        "[resampler]",
        'alignment = "utc"',
        f"timeframes = {json.dumps(list(TIMEFRAMES))}",
        "",
        "[gateway]",
        f'publish = "ipc://{ipc}/gateway.pub"',
        f'requests = "ipc://{ipc}/gateway.req"',
    ]
    prev = ""
    for name in STAGES:
        lines += ["", f"[{name}.endpoints]", f'feed = "ipc://{ipc}/{name}"', "metrics_port = 0"]
        if prev:
            lines.append(f'upstream = "ipc://{ipc}/{prev}"')
        prev = name
    path = data.parent / "universe.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _link_raw(all_raw: Path, raw: Path, symbols: list[str], sides: list[str]) -> None:
    """``raw/SYMBOL/SIDE`` → the generated series (the RawCache layout, nothing copied)."""
    for sym in symbols:
        for side in sides:
            (raw / sym).mkdir(parents=True, exist_ok=True)
            (raw / sym / side).symlink_to(all_raw / sym / side / sym / side)


def _sample_rss(
    procs: dict[str, subprocess.Popen[bytes]], anon: dict[str, int], file: dict[str, int],
    done: threading.Event,
) -> None:  # fmt: skip
    while not done.wait(0.1):
        for name, proc in procs.items():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    kib = int(value.split()[0]) * 1024
                    target = anon if key == "RssAnon" else file
                    target[name] = max(target.get(name, 0), kib)


def _disk_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def run_once(n: int, years: int, all_raw: Path, base: Path) -> Run:
    from barstream.shared.checkpoint import Checkpoint

    symbols, sides = selection(n)
    base.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="bs-universe-", dir=base) as work_s,
        tempfile.TemporaryDirectory(prefix="bs-ipc-", dir="/tmp") as ipc,
    ):
        work = Path(work_s)
        data = work / "data"
        _link_raw(all_raw, data / "raw", symbols, sides)
        config = write_config(data, Path(ipc), symbols, sides, years)
        logs = {name: (work / f"{name}.log").open("wb") for name in STAGES}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        anon: dict[str, int] = {}
        file: dict[str, int] = {}
        done = threading.Event()
        began_wall = time.time()
        began = time.monotonic()  # the processes' timeout counts from here
        try:
            for name in STAGES:
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", f"barstream.services.{name}", "-c", str(config),
                     "--drain"],
                    cwd=REPO, stdin=subprocess.DEVNULL, stdout=logs[name], stderr=logs[name],
                )  # fmt: skip
            sampler = threading.Thread(
                target=_sample_rss, args=(procs, anon, file, done), daemon=True
            )
            sampler.start()
            try:
                cpu = _wait_all(procs, began + TIMEOUT_S)
            finally:
                done.set()
            check_exits(procs, work)
        finally:
            reap(procs, logs)
        points = {name: Checkpoint(data / name / "checkpoint.json").load() for name in STAGES}
        if any(p is None for p in points.values()):
            raise RuntimeError(f"no checkpoint after the run: {points}")
        wall = max(p.wall_ms for p in points.values() if p is not None) / 1000 - began_wall
        agg = points["aggregator"]
        assert agg is not None
        bars = sum(m.length for k, m in agg.stores.items() if k.endswith("/1m"))
        verify(data, symbols, sides)
        disk = {name: _disk_bytes(data / name) for name in STAGES}
        return Run(n, years, wall, bars, cpu, anon, file, disk)


def verify(data: Path, symbols: list[str], sides: list[str]) -> None:
    """Every stream's resampler stores equal ``resample_all`` over the aggregator's 1m store;
    the gateway's replicas equal the resampler's."""
    from barstream.services.resampler.resample import resample_all
    from barstream.shared.alignment import PRESETS
    from barstream.shared.store import Store
    from barstream.shared.timeframe import Timeframe

    tfs = [Timeframe.parse(t) for t in TIMEFRAMES]
    for sym in symbols:
        for side in sides:

            def read(service: str, tf: str, sym: str = sym, side: str = side) -> bytes:
                path = data / service / sym / side / f"{tf}.bars"
                with Store.open(path, writable=False) as s:
                    return s.snapshot().tobytes()

            with Store.open(data / "aggregator" / sym / side / "1m.bars", writable=False) as s:
                m1 = s.snapshot()
            if not len(m1):
                raise AssertionError(f"{sym}/{side}: no 1m bars")
            for tf, bars in resample_all(m1, tfs, PRESETS["utc"]).items():
                if read("resampler", str(tf)) != bars.tobytes():
                    raise AssertionError(f"{sym}/{side}/{tf}: resampler != resample_all")
                if read("gateway", str(tf)) != bars.tobytes():
                    raise AssertionError(f"{sym}/{side}/{tf}: gateway != resampler")


def rows_of(runs: list[Run]) -> list[tuple[str, float, str]]:
    rows: list[tuple[str, float, str]] = []
    one = next((r for r in runs if r.n == 1), None)
    for r in runs:
        label = f"universe {r.years}y, N={r.n}"
        rows.append((f"{label}: wall", r.wall_s, "s, every store of every stage committed"))
        rows.append((f"{label}: cpu", sum(r.cpu_s.values()), "s cpu, all processes"))
        for name in STAGES:
            rows.append((f"{label}: {name} cpu", r.cpu_s.get(name, 0.0), "s"))
            rows.append((f"{label}: {name} peak anon RSS", r.rss_anon.get(name, 0) / 2**20, "MiB"))
            rows.append((f"{label}: {name} peak file RSS", r.rss_file.get(name, 0) / 2**20, "MiB"))
        disk = sum(r.disk_bytes.values())
        rows.append((f"{label}: stores on disk", disk / 2**30, "GiB"))
        rows.append((f"{label}: stores on disk per instrument-side", disk / r.n / 2**30, "GiB"))
        if one is not None and r.n > 1:
            rows.append(
                (f"{label}: marginal wall per added instrument-side",
                 (r.wall_s - one.wall_s) / (r.n - 1), "s")
            )  # fmt: skip
    return rows


def run(n_values: tuple[int, ...] = DEFAULT_N, years: int = 2) -> list[tuple[str, float, str]]:
    """``make bench``: N = 1, 2, 4 over two years."""
    runs = []
    for n in n_values:
        symbols, sides = selection(n)
        all_raw, _ = ensure_cache(symbols, sides, years)
        runs.append(run_once(n, years, all_raw, OUT))
    return rows_of(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.universe",
        description="N instrument-sides × Y years through the real services: wall, CPU and "
        "peak RSS per service, bytes on disk, marginal cost per instrument-side.",
    )
    parser.add_argument("--n", default=",".join(map(str, DEFAULT_N)), help="e.g. 1,2,4,8,16")
    parser.add_argument("--years", type=int, default=2, help="years ending 2019 (default 2)")
    parser.add_argument("--shm", action="store_true", help="stores on /dev/shm, not the disk")
    args = parser.parse_args(argv)
    ns = tuple(int(x) for x in args.n.split(","))
    runs = []
    for n in ns:
        symbols, sides = selection(n)
        all_raw, gen_s = ensure_cache(symbols, sides, args.years)
        r = run_once(n, args.years, all_raw, Path("/dev/shm") if args.shm else OUT)
        runs.append(r)
        print(
            f"N={n}: {r.bars_1m:,} 1m bars in {r.wall_s:.2f} s, cpu "
            + " ".join(f"{k} {v:.1f}s" for k, v in r.cpu_s.items())
            + f"; stores {sum(r.disk_bytes.values()) / 2**30:.2f} GiB"
            + (f" (generated the cache in {gen_s:.0f} s)" if gen_s else ""),
            file=sys.stderr,
            flush=True,
        )
    from bench import print_table

    print_table(rows_of(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
