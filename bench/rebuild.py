"""Full rebuild benchmark: 20 years of EUR-USD BID through the real service processes.

The raw cache (≈ 7,300 day files in the JSON API's format, ≈ 7.5 M 1m bars, tiled from the
real HistData bars by ``barstream.fake.cache.generate_cache``) is generated once and kept under
``bench/out/`` (gitignored). Each run then starts the real processes over ipc:// in drain
mode — downloader (``cache_only``) → transformer → aggregator → resampler (1m + 5m 15m 30m
1h 4h 1d 1W 1M 1Y) — and times them from the first process start until the resampler's
checkpoint covers every 1m record the aggregator committed (the moment every store of every
timeframe is committed; read from that checkpoint's ``wall_ms``, so the bench process does
not poll while the pipeline runs). Stores go on the repo's disk and, separately, on
/dev/shm; the raw cache stays where it was generated (page cache warm after generation).

At the end of every run the stores are checked: the resampler's 1m replica equals the
aggregator's 1m store, and every timeframe store equals ``resample_all`` over that 1m store,
byte for byte (a rebuild that is fast but wrong is worthless: the bench fails).

    python -m bench.rebuild                 # table (disk and /dev/shm)
    python -m bench.rebuild --only shm      # one target
    python -m bench.rebuild --keep DIR      # keep stores and logs under DIR for inspection
    python -m bench.rebuild --profile DIR   # every service under cProfile, CPU time (DIR/*.prof)
    python -m bench.rebuild --py-spy DIR    # sample every service with py-spy (on-CPU stacks)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
SYMBOL = "EUR-USD"
SIDE = "BID"
START = dt.date(2006, 1, 1)
END = dt.date(2025, 12, 31)
TIMEFRAMES = ("5m", "15m", "30m", "1h", "4h", "1d", "1W", "1M", "1Y")
STAGES = ("downloader", "transformer", "aggregator", "resampler")
TARGETS = {"disk": OUT, "shm": Path("/dev/shm")}
TIMEOUT_S = 120.0


#: Run a service under cProfile timed by the process's CPU time (all its threads), so a
#: stage waiting for its upstream costs nothing in the profile.
_PROFILE_CPU = """
import cProfile, runpy, sys, time
sys.argv[0] = {module!r}
profiler = cProfile.Profile(time.process_time)
profiler.enable()
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
finally:
    profiler.disable()
    profiler.dump_stats({out!r})
"""


@dataclass
class RunResult:
    target: str
    elapsed_s: float  # first process start → every store committed
    exited_s: float  # first process start → every process exited (drain mode's idle waits)
    bars_1m: int
    days: int
    stage_done_s: dict[str, float]  # per stage: start → its last commit (checkpoint wall_ms)
    stage_cpu_s: dict[str, float]  # per stage: CPU seconds (user + system) of its process

    @property
    def bars_per_s(self) -> float:
        return self.bars_1m / self.elapsed_s


def cache_dir() -> Path:
    return OUT / f"raw-{SYMBOL}-{SIDE}-{START:%Y%m%d}-{END:%Y%m%d}"


def ensure_cache() -> tuple[Path, float]:
    """The raw cache (generated on first use). Returns (root, seconds spent generating)."""
    from barstream import paths
    from barstream.fake.cache import generate_cache

    root = cache_dir()
    if (root / "COMPLETE").exists():
        return root, 0.0
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    began = time.perf_counter()
    n = generate_cache(tmp, SYMBOL, SIDE, START, END, real_dir=paths.real_data_dir())
    (tmp / "COMPLETE").write_text(f"{n} days\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root, time.perf_counter() - began


def write_config(data_dir: Path, ipc: Path) -> Path:
    lines = [
        "[pipeline]",
        f'data_dir = "{data_dir}"',
        f'symbols = ["{SYMBOL}"]',
        f'sides = ["{SIDE}"]',
        f"start_date = {START.isoformat()}",
        "",
        "[downloader]",
        "cache_only = true",
        f"end_date = {END.isoformat()}",
        "",
        "[resampler]",
        'alignment = "utc"',
        f"timeframes = {json.dumps(list(TIMEFRAMES))}",
    ]
    prev = ""
    for name in STAGES:
        lines += ["", f"[{name}.endpoints]", f'feed = "ipc://{ipc}/{name}"', "metrics_port = 0"]
        if prev:
            lines.append(f'upstream = "ipc://{ipc}/{prev}"')
        prev = name
    path = data_dir.parent / "rebuild.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def _workdir(base: Path, keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        yield keep
        return
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bs-rebuild-", dir=base) as d:
        yield Path(d)


def run_pipeline(
    target: str,
    raw: Path,
    *,
    keep: Path | None = None,
    profile: Path | None = None,
    py_spy: Path | None = None,
    verify: bool = True,
    timeline: bool = False,
) -> RunResult:
    from barstream.shared.checkpoint import Checkpoint

    with (
        _workdir(TARGETS[target], keep) as work,
        tempfile.TemporaryDirectory(prefix="bs-ipc-", dir="/tmp") as ipc,
    ):
        data = work / "data"
        data.mkdir()
        (data / "raw").symlink_to(raw)
        config = write_config(data, Path(ipc))
        procs: dict[str, subprocess.Popen[bytes]] = {}
        logs = {name: (work / f"{name}.log").open("wb") for name in STAGES}
        began_wall = time.time()
        began = time.monotonic()
        try:
            for name in STAGES:
                cmd = [sys.executable]
                if py_spy is not None:
                    py_spy.mkdir(parents=True, exist_ok=True)
                    spy = shutil.which("py-spy") or "py-spy"
                    out = str(py_spy / f"{target}-{name}.txt")
                    cmd = [spy, "record", "-r", "250", "-f", "raw", "-o", out, "--", *cmd]
                args = ["--config", str(config), "--drain"]
                if profile is not None:
                    profile.mkdir(parents=True, exist_ok=True)
                    out = str(profile / f"{target}-{name}.prof")
                    cmd += [
                        "-c",
                        _PROFILE_CPU.format(module=f"barstream.services.{name}", out=out),
                        *args,
                    ]
                else:
                    cmd += ["-m", f"barstream.services.{name}", *args]
                procs[name] = subprocess.Popen(
                    cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=logs[name], stderr=logs[name]
                )
            done = threading.Event()
            if timeline:
                sampler = threading.Thread(
                    target=_timeline, args=(procs, data, began, done), daemon=True
                )
                sampler.start()
            try:
                cpu = _wait_all(procs, began + TIMEOUT_S)
            finally:
                done.set()
            exited_s = time.monotonic() - began
            check_exits(procs, work)
        finally:
            reap(procs, logs)
        points = {name: Checkpoint(data / name / "checkpoint.json").load() for name in STAGES}
        for name, point in points.items():
            if point is None:
                raise RuntimeError(f"{name}: no checkpoint after the run")
        agg = points["aggregator"]
        res = points["resampler"]
        assert agg is not None and res is not None
        m1_key = f"{SYMBOL}/{SIDE}/1m"
        bars_1m = agg.stores[m1_key].length
        consumed = res.upstream[m1_key].offset
        if consumed != bars_1m:
            raise RuntimeError(f"resampler consumed {consumed} of {bars_1m} 1m records")
        days = points["downloader"].stores[f"{SYMBOL}/{SIDE}/fetch"].length  # type: ignore[union-attr]
        stage_done = {
            name: point.wall_ms / 1000 - began_wall
            for name, point in points.items()
            if point is not None
        }
        result = RunResult(
            target=target,
            elapsed_s=stage_done["resampler"],
            exited_s=exited_s,
            bars_1m=bars_1m,
            days=days,
            stage_done_s=stage_done,
            stage_cpu_s=cpu,
        )
        if verify:
            verify_stores(data)
        return result


def _timeline(
    procs: dict[str, subprocess.Popen[bytes]], data: Path, began: float, done: threading.Event
) -> None:
    """Debug: every 0.25 s, each stage's CPU use and committed records (stderr)."""
    from barstream.shared.checkpoint import Checkpoint

    tick = os.sysconf("SC_CLK_TCK")
    last: dict[str, float] = {}
    while not done.wait(0.25):
        cols = []
        for name, proc in procs.items():
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
            except (OSError, IndexError):
                cpu = last.get(name, 0.0)
            point = None
            with contextlib.suppress(Exception):
                point = Checkpoint(data / name / "checkpoint.json").load()
            n = sum(m.length for m in point.stores.values()) if point is not None else 0
            cols.append(f"{name[:5]} {(cpu - last.get(name, 0.0)) / 0.25 * 100:4.0f}% {n:>9}")
            last[name] = cpu
        print(f"{time.monotonic() - began:6.2f}s  " + "  ".join(cols), file=sys.stderr)


def check_exits(procs: dict[str, subprocess.Popen[bytes]], work: Path) -> None:
    """Every process exited 0, else the tail of the first failed one's log (``work/NAME.log``)."""
    for name, proc in procs.items():
        if proc.returncode != 0:
            tail = (work / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{tail}")


def reap(procs: dict[str, subprocess.Popen[bytes]], logs: dict[str, Any]) -> None:
    """Kill what still runs (a failed or timed-out run) and close the logs."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for log in logs.values():
        log.close()


def _wait_all(procs: dict[str, subprocess.Popen[bytes]], deadline: float) -> dict[str, float]:
    """Reap every process (os.wait4, for its CPU time); returns CPU seconds (user + sys)."""
    cpu: dict[str, float] = {}
    while len(cpu) < len(procs):
        for name, proc in procs.items():
            if name in cpu:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                cpu[name] = usage.ru_utime + usage.ru_stime
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done after {TIMEOUT_S:.0f}s: {sorted(set(procs) - set(cpu))}")
        time.sleep(0.02)
    return cpu


def _records(data: Path, service: str, tf: str) -> np.ndarray:
    from barstream.shared.store import Store

    path = data / service / SYMBOL / SIDE / f"{tf}.bars"
    with Store.open(path, writable=False) as store:
        return store.snapshot()


def verify_stores(data: Path) -> None:
    """Every resampler store equals ``resample_all`` over the aggregator's 1m store."""
    from barstream.services.resampler.resample import resample_all
    from barstream.shared.alignment import PRESETS
    from barstream.shared.timeframe import Timeframe

    m1 = _records(data, "aggregator", "1m")
    if len(m1) < 1_000_000:
        raise AssertionError(f"only {len(m1)} 1m records: the rebuild is incomplete")
    if _records(data, "resampler", "1m").tobytes() != m1.tobytes():
        raise AssertionError("resampler's 1m replica differs from the aggregator's 1m store")
    expected = resample_all(m1, [Timeframe.parse(t) for t in TIMEFRAMES], PRESETS["utc"])
    for tf, bars in expected.items():
        got = _records(data, "resampler", str(tf))
        if got.tobytes() != bars.tobytes():
            raise AssertionError(f"resampler {tf} store differs from resample_all over 1m")


LABELS = {"disk": "stores on the repo's disk", "shm": "stores on /dev/shm"}


def rows_of(r: RunResult) -> list[tuple[str, float, str]]:
    label = f"rebuild 20y {SYMBOL} {SIDE}, {LABELS[r.target]}"
    return [
        (f"{label}: rate", r.bars_per_s, "1m bars/s"),
        (f"{label}: time", r.elapsed_s, "s, first process start → every store committed"),
        (f"{label}: cpu", sum(r.stage_cpu_s.values()), "s cpu, all processes"),
    ]


def run(
    targets: tuple[str, ...] = ("disk", "shm"), repeat: int = 1
) -> list[tuple[str, float, str]]:
    """Each target ``repeat`` times (the fastest run is reported), stores verified."""
    raw, gen_s = ensure_cache()
    rows: list[tuple[str, float, str]] = []
    if gen_s:
        rows.append(("rebuild: generate the raw cache (once)", gen_s, "s"))
    for target in targets:
        runs = [run_pipeline(target, raw) for _ in range(repeat)]
        rows += rows_of(min(runs, key=lambda r: r.elapsed_s))
    return rows


def print_rows(rows: list[tuple[str, float, str]]) -> None:
    width = max(len(name) for name, _, _ in rows)
    print(f"{'benchmark':<{width}}  {'value':>14}  unit")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>14,.2f}  {unit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rebuild",
        description="Full rebuild of 20 years of EUR-USD BID through the real services.",
    )
    parser.add_argument("--only", choices=sorted(TARGETS), help="one target (default: both)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per target (best is kept)")
    parser.add_argument("--keep", type=Path, help="keep stores and logs under this directory")
    parser.add_argument("--profile", type=Path, help="run services under cProfile, .prof here")
    parser.add_argument("--py-spy", type=Path, help="sample services with py-spy, stacks here")
    parser.add_argument("--timeline", action="store_true", help="print CPU/progress per stage")
    parser.add_argument("--no-verify", action="store_true", help="skip the store check")
    args = parser.parse_args(argv)
    targets = (args.only,) if args.only else tuple(TARGETS)
    raw, gen_s = ensure_cache()
    rows: list[tuple[str, float, str]] = []
    if gen_s:
        print(f"generated the raw cache in {gen_s:.1f} s: {raw}")
        rows.append(("rebuild: generate the raw cache (once)", gen_s, "s"))
    for target in targets:
        best: RunResult | None = None
        for _ in range(max(1, args.repeat)):
            r = run_pipeline(
                target,
                raw,
                keep=args.keep,
                profile=args.profile,
                py_spy=args.py_spy,
                verify=not args.no_verify,
                timeline=args.timeline,
            )
            stages = "  ".join(
                f"{n} {s:.2f}s (cpu {r.stage_cpu_s[n]:.2f}s)" for n, s in r.stage_done_s.items()
            )
            print(
                f"{target}: {r.bars_1m:,} 1m bars, {r.days:,} days in {r.elapsed_s:.2f} s "
                f"({r.bars_per_s:,.0f} bars/s); processes exited after {r.exited_s:.2f} s; "
                f"last commit per stage: {stages}; "
                f"{'verified equal to resample_all' if not args.no_verify else 'not verified'}",
                flush=True,
            )
            if best is None or r.elapsed_s < best.elapsed_s:
                best = r
        assert best is not None
        rows += rows_of(best)
    print_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
