"""``barstream rebuild``: recompute every service's stores from the raw cache, no downloads.

1. stop the services if supervisord runs them (remembering which were running);
2. move each service's directory (``data_dir/SERVICE``) aside to ``data_dir/.aside-STAMP/``;
   the raw cache (``data_dir/raw``) stays;
3. run the five services in drain mode on private ipc endpoints and free metrics ports, the
   downloader with ``cache_only = true``: each stage exits once its upstream is exhausted and
   its downstream has everything — so when all have exited 0, every store is committed;
4. report records and bars/s, then start again the services that were running;
5. list what the rebuilt stores lack (``barstream.missing``): streams held by a bad payload,
   gap days, days the user skipped — each with what to do. The command exits 1 on any of
   them (``--allow-skipped``: the skipped days are accepted).

Every store is a pure function of its upstream, so the result equals what the live pipeline
would have built from the same raw days. The old stores stay aside until you delete them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from barstream import configs, missing, paths
from barstream.services.downloader.raw_cache import RawCache
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.config import FEATURES_FOLLOWER, SERVICES, UPSTREAM_OF, Config, section
from barstream.shared.errors import CheckpointCorrupt, RebuildError
from barstream.supervise import Supervisor, program
from barstream.verify import plan, verify_store


@dataclass
class RebuildResult:
    elapsed_s: float = 0.0
    records: dict[str, int] = field(default_factory=dict)  # service → committed records
    bars_1m: int = 0
    aside: Path | None = None
    restarted: list[str] = field(default_factory=list)
    missing: list[missing.Missing] = field(default_factory=list)  # what the stores lack

    @property
    def bars_per_s(self) -> float:
        return self.bars_1m / self.elapsed_s if self.elapsed_s > 0 else 0.0


def followers(name: str, cfg: Config) -> list[str]:
    """The feed client names that follow service ``name`` in a rebuild: it waits for each
    before it exits (a slow starter — the features stage imports numba — must not find its
    upstream gone)."""
    out = [n for n, up in UPSTREAM_OF.items() if up == name]
    if name == "features" and cfg.features:
        out.append(FEATURES_FOLLOWER)  # the gateway's second feed client
    return out


def drain_config(source: dict[str, Any], cfg: Config, run_dir: Path) -> dict[str, Any]:
    """The configuration of a rebuild: the same pipeline, cache-only, private endpoints."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in source.items()}
    data.setdefault("pipeline", {})["data_dir"] = cfg.pipeline.data_dir
    data["pipeline"]["port_offset"] = 0  # its ports below are private and free as they are
    data.setdefault("downloader", {})["cache_only"] = True
    for name in SERVICES:
        table = data.setdefault(section(name), {})
        ep = dict(table.get("endpoints", {}))
        ep["feed"] = f"ipc://{run_dir}/{name}.feed"
        ep["upstream"] = f"ipc://{run_dir}/{UPSTREAM_OF[name]}.feed" if name in UPSTREAM_OF else ""
        ep["metrics_host"] = "127.0.0.1"
        ep["metrics_port"] = 0  # any free port, chosen at bind: never one another took
        table["endpoints"] = ep
    data["downloader"]["endpoints"].pop("upstream")
    data["gateway"]["features_upstream"] = f"ipc://{run_dir}/features.feed"
    data["gateway"]["publish"] = f"ipc://{run_dir}/gateway.pub"
    data["gateway"]["requests"] = f"ipc://{run_dir}/gateway.req"
    return data


def last_error(log: Path) -> str:
    """The last ERROR or CRITICAL line of a service's log, without its timestamp (the
    error that stopped it: e.g. a full disk, naming the file and the space it needed)."""
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        for line in reversed(lines):
            for level in (" CRITICAL ", " ERROR "):
                if level in line:
                    return line.split(level, 1)[1].strip()
    return "no error in its log"


def cached_days(cfg: Config) -> int:
    cache = RawCache(configs.data_root(cfg) / "raw", today=lambda: dt.date.max)
    return sum(
        1
        for sym, side in cfg.streams()
        for day in cache.days(sym, side)
        if day >= cfg.pipeline.start_date
        and (cfg.downloader.end_date is None or day <= cfg.downloader.end_date)
    )


def committed(root: Path) -> int:
    with contextlib.suppress(CheckpointCorrupt, OSError):
        point = Checkpoint(root / "checkpoint.json").load()
        if point is not None:
            return sum(m.length for m in point.stores.values())
    return 0


def rebuild(
    config_path: Path,
    cfg: Config,
    supervisor: Supervisor,
    *,
    timeout_s: float,
    log_dir: Path,
    progress: bool = True,
) -> RebuildResult:
    res = RebuildResult()
    was_running: list[str] = []
    if supervisor.running():
        procs = supervisor.processes()
        was_running = [
            n for n in SERVICES if procs.get(program(n), {}).get("statename") == "RUNNING"
        ]
        for name in SERVICES:
            if procs.get(program(name), {}).get("statename") in ("RUNNING", "STARTING", "BACKOFF"):
                supervisor.rpc().supervisor.stopProcess(program(name), True)
    root = configs.data_root(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = root / f".aside-{stamp}"
    for name in SERVICES:
        d = cfg.data_dir(name)
        if d.exists():
            aside.mkdir(parents=True, exist_ok=True)
            d.rename(aside / name)
            res.aside = aside
    total_days = cached_days(cfg)
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bs-rebuild-", dir="/tmp") as tmp:
        run_dir = Path(tmp)
        path = run_dir / "rebuild.toml"
        configs.write(path, drain_config(configs.read_dict(config_path), cfg, run_dir))
        procs_run: dict[str, subprocess.Popen[bytes]] = {}
        logs = []
        began = time.monotonic()
        try:
            for name in SERVICES:
                log = (log_dir / f"rebuild-{name}.log").open("wb")
                logs.append(log)
                procs_run[name] = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        f"barstream.services.{name}",
                        "--config",
                        str(path),
                        "--drain",
                        "--drain-peers",
                        ",".join(followers(name, cfg)),
                    ],
                    cwd=paths.home(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            bar = tqdm(total=total_days, unit="day", desc="rebuild", disable=not progress)
            try:
                while True:
                    done = {n: p.poll() for n, p in procs_run.items()}
                    bar.n = min(committed(cfg.data_dir("downloader")), total_days)
                    bar.refresh()
                    failed = {n: c for n, c in done.items() if c not in (None, 0)}
                    if failed:
                        raise RebuildError(
                            "; ".join(
                                f"{n} exited {c}: {last_error(log_dir / f'rebuild-{n}.log')} "
                                f"(see {log_dir / f'rebuild-{n}.log'})"
                                for n, c in failed.items()
                            )
                        )
                    if all(c == 0 for c in done.values()):
                        break
                    if time.monotonic() - began > timeout_s:
                        raise RebuildError(f"not done after {timeout_s:.0f}s")
                    time.sleep(0.2)
            finally:
                bar.close()
        finally:
            for p in procs_run.values():
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            for log in logs:
                log.close()
        res.elapsed_s = time.monotonic() - began
    for name in SERVICES:
        res.records[name] = committed(cfg.data_dir(name))
    res.bars_1m = res.records.get("aggregator", 0)
    faults = [
        str(f)
        for store, mark, pre in plan(root)
        if not any(part.startswith(".aside-") for part in store.parts)
        for f in [*pre, *(verify_store(store, mark).faults if store.suffix == ".bars" else [])]
    ]
    if faults:
        raise RebuildError("rebuilt stores fail verify: " + "; ".join(faults[:5]))
    res.missing = missing.scan(root)
    for name in was_running:
        supervisor.rpc().supervisor.startProcess(program(name), False)
        res.restarted.append(name)
    return res
