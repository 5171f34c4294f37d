"""Configuration handling of the CLI: load (relative paths resolve against the home,
``barstream.paths.home()``, where supervisord runs the services), derive (rebuild, tests) and
write back as TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from barstream import paths, tomlw
from barstream.shared import config as config_mod
from barstream.shared.config import Config

DEMO_CONFIG = paths.resource("config/demo.toml")
LIVE_CONFIG = paths.resource("config/live.toml")


def load(path: Path) -> Config:
    """Load and validate ``path``; a relative ``pipeline.data_dir`` becomes absolute under
    the home (the services' working directory under supervisord)."""
    cfg = config_mod.load(path)
    cfg.pipeline.data_dir = str(data_root(cfg))
    return cfg


def data_root(cfg: Config) -> Path:
    root = Path(cfg.pipeline.data_dir)
    return paths.resolve(root)


def read_dict(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def write(path: Path, data: dict[str, Any]) -> Config:
    """Write ``data`` as TOML at ``path`` and return it validated (errors name ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlw.dumps(data))
    return config_mod.load(path)


def metrics_url(cfg: Config, service: str) -> str:
    ep = cfg.endpoints(service)
    host = config_mod.connect_host(ep.metrics_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{ep.metrics_port}/metrics"
