"""The fake Dukascopy upstream, configured from the pipeline's configuration file::

    python -m barstream.fake --config config/demo.toml

Reads ``[fake_upstream]`` (port, speed, seed, start = the simulated time at startup) and
binds ``pipeline.host``, so the fake and the downloader's ``base_url`` come from one file
(supervisord's ``barstream:fake_upstream`` program and docker-compose's ``demo`` profile
run exactly this). Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

from barstream.services.downloader.fake_upstream import DEFAULT_REAL_DIR, FakeUpstream, SimClock
from barstream.shared import config as config_mod
from barstream.shared.config import Config
from barstream.shared.errors import ConfigError

log = logging.getLogger("barstream.fake")


def sim_start_ms(cfg: Config) -> int:
    """The simulated time at startup: ``fake_upstream.start`` (ISO, UTC), else now."""
    import datetime as dt

    text = cfg.fake_upstream.start
    if not text:
        return int(time.time() * 1000)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            "fake_upstream.start",
            text,
            "not an ISO date/time like 2026-06-24T12:00",
            path=cfg.source,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)


def check(cfg: Config) -> None:
    """The downloader must reach this fake: same port in ``downloader.base_url``."""
    url = urllib.parse.urlsplit(cfg.downloader.base_url)
    if url.port is not None and url.port != cfg.fake_upstream.port:
        raise ConfigError(
            "downloader.base_url",
            cfg.downloader.base_url,
            f"does not point at the fake upstream's port {cfg.fake_upstream.port}",
            path=cfg.source,
        )
    if cfg.fake_upstream.speed <= 0:
        raise ConfigError(
            "fake_upstream.speed", cfg.fake_upstream.speed, "must be > 0", path=cfg.source
        )


def build(cfg: Config, *, real_dir: Path | None = DEFAULT_REAL_DIR) -> FakeUpstream:
    fu = cfg.fake_upstream
    return FakeUpstream(
        clock=SimClock(sim_start_ms(cfg), fu.speed),
        seed=fu.seed,
        host=cfg.pipeline.host,
        port=fu.port,
        real_dir=real_dir if real_dir is not None and real_dir.is_dir() else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m barstream.fake",
        description="Serve the fake Dukascopy upstream as the configuration's [fake_upstream] "
        "section says (port, speed, seed, simulated start), bound to pipeline.host.",
    )
    parser.add_argument("--config", "-c", type=Path, required=True, help="configuration (TOML)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s fake %(levelname)s %(message)s"
    )
    try:
        cfg = config_mod.load(args.config)
        check(cfg)
        upstream = build(cfg)
    except ConfigError as e:
        log.error("cannot start: %s", e)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        upstream.start()
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", cfg.pipeline.host, cfg.fake_upstream.port, e)
        return 1
    log.info(
        "fake upstream on %s, simulated start %s, speed %gx, seed %d",
        upstream.url,
        cfg.fake_upstream.start or "now",
        cfg.fake_upstream.speed,
        cfg.fake_upstream.seed,
    )
    try:
        stop.wait()
    finally:
        upstream.stop()
        log.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
