"""Where barstream finds its files, in a checkout and in an installed wheel alike.

Nothing here looks at the source tree: shipped files (``supervisord.conf``, the example
configurations) are package data of ``barstream.resources``; the files a run makes (stores,
logs, supervisord's socket) live under the *home*, a directory the user picks:

    BARSTREAM_HOME   home directory: relative ``pipeline.data_dir`` and ``var/`` resolve
                     here, and supervisord runs the services here (default: the current
                     directory, so ``make run`` in a checkout keeps everything in it)
    BARSTREAM_VAR    run directory of supervisord (default ``$BARSTREAM_HOME/var``)
    BARSTREAM_REAL_DATA  recorded Dukascopy and HistData files the fake upstream serves
                     (default ``../shared/data/real`` from the home; optional)
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def home() -> Path:
    """The directory relative paths of a run resolve against."""
    return Path(os.environ.get("BARSTREAM_HOME") or Path.cwd()).resolve()


def var_dir() -> Path:
    """supervisord's run directory: control socket, pid file, logs under ``log/``."""
    return Path(os.environ.get("BARSTREAM_VAR") or home() / "var")


def real_data_dir() -> Path:
    """The recorded real data (it may be absent: the fake then generates its days)."""
    return Path(os.environ.get("BARSTREAM_REAL_DATA") or home().parent / "shared" / "data" / "real")


def resource(name: str) -> Path:
    """A file shipped with the package (``supervisord.conf``, ``config/demo.toml`` …)."""
    path = Path(str(resources.files("barstream.resources").joinpath(name)))
    if not path.exists():
        raise FileNotFoundError(
            f"barstream package data {name!r} is missing at {path}: reinstall barstream"
        )
    return path


def resolve(path: str | Path) -> Path:
    """``path`` made absolute against the home."""
    p = Path(path)
    return p if p.is_absolute() else home() / p
