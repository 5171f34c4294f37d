"""The TCP ports of a supervisord run (``barstream demo``, ``barstream run``): checked free
before anything starts, and moved by ``--port-offset N``.

``unavailable`` tries to bind each port the run will listen on — every service's feed and
metrics port, the gateway's ``publish``/``requests``, the fake upstream (demo mode) and the
supervisor event listener (``--events-port``) — and closes it at once; each port it cannot
bind is a ``BindError`` naming the configuration key, the address and what to do. The probe
sets ``SO_REUSEADDR`` as the services' own listeners do (ZeroMQ, ``http.server``,
prometheus_client): on Linux a port another socket *listens* on is refused either way, but a
port left in ``TIME_WAIT`` by the last run (its /metrics scrapes) is free to them, so it is
free here too.

``--port-offset N`` is the configuration key ``pipeline.port_offset`` (which shared/config.py
applies to every TCP port): ``offset_config`` writes the given file with the key set into
the run directory, and that file is what supervisord passes to every service.
"""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from barstream import configs
from barstream.shared import config as config_mod
from barstream.shared.config import Config, Listen
from barstream.shared.errors import BindError

#: Offsets ``suggest_offset`` tries, in order.
SUGGESTED_OFFSETS: Final = (100, 200, 300, 500, 1000, 2000, 5000, 10000)
#: The key the supervisor event listener's port goes by (a flag, not a configuration key).
EVENTS_KEY: Final = "--events-port"


def listens(cfg: Config, *, fake: bool, events_port: int) -> list[Listen]:
    """Every TCP port the run listens on: the configuration's and the event listener's."""
    out = config_mod.tcp_listens(cfg, fake=fake)
    if events_port:
        out.append(Listen(EVENTS_KEY, "127.0.0.1", events_port, events_port))
    return out


def events_port(cfg: Config, given: int) -> int:
    """The event listener's port of the run: ``--events-port`` plus ``pipeline.port_offset``."""
    return config_mod.offset_port(given, cfg.pipeline.port_offset)


def unavailable(cfg: Config, *, fake: bool, events_port: int) -> list[BindError]:
    """A ``BindError`` for each port of the run that cannot be bound now (and for each port
    two keys share), in configuration order."""
    found: list[BindError] = []
    seen: list[Listen] = []
    offset = cfg.pipeline.port_offset
    for item in listens(cfg, fake=fake, events_port=events_port):
        other = next((x.key for x in seen if _same_port(x, item)), None)
        seen.append(item)
        if other is not None:
            found.append(
                BindError(
                    item.key,
                    item.value,
                    f"port {item.port} is also {other}'s",
                    in_use=False,
                    path=cfg.source,
                )
            )
            continue
        problem = probe(item.host, item.port)
        if problem is not None:
            where = f"{item.host}:{item.port}"
            if offset:
                where += f" (pipeline.port_offset = {offset} included)"
            found.append(
                BindError(
                    item.key,
                    item.value,
                    f"cannot listen on {where}: {problem.strerror}",
                    in_use=problem.errno == errno.EADDRINUSE,
                    path=cfg.source,
                )
            )
    return found


_ANY_HOST: Final = frozenset({"", "*", "0.0.0.0", "::"})


def _same_port(a: Listen, b: Listen) -> bool:
    """Whether two listens clash: one port on one host (or on every host)."""
    if a.port != b.port:
        return False
    ha, hb = config_mod.connect_host(a.host), config_mod.connect_host(b.host)
    return ha == hb or a.host in _ANY_HOST or b.host in _ANY_HOST


def probe(host: str, port: int) -> OSError | None:
    """Bind ``host:port`` (SO_REUSEADDR, like the services) and close at once: None when
    that works, else why not. A host that does not resolve (a ZeroMQ interface name) is not
    judged here: None."""
    bind_host = "" if host in ("*", "") else host
    try:
        infos = socket.getaddrinfo(
            bind_host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror:
        return None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            return e
    return None


def suggest_offset(cfg: Config, *, fake: bool, events_port: int) -> int | None:
    """The first of ``SUGGESTED_OFFSETS`` (added to the current offset) with every port of
    the run free and within range now; None if none is."""
    base = listens(cfg, fake=fake, events_port=events_port)
    for extra in SUGGESTED_OFFSETS:
        ports = [(x.host, x.port + extra) for x in base]
        if all(p <= config_mod.MAX_PORT for _, p in ports) and all(
            probe(h, p) is None for h, p in ports
        ):
            return cfg.pipeline.port_offset + extra
    return None


def check_free(cfg: Config, *, fake: bool, events_port: int, prefix: str) -> bool:
    """Before a run starts: True when every port of it is free; else print one line per
    port that is not (and an offset that works) to stderr and return False."""
    problems = unavailable(cfg, fake=fake, events_port=events_port)
    if not problems:
        return True
    suggestion = (
        suggest_offset(cfg, fake=fake, events_port=events_port)
        if any(e.in_use for e in problems)
        else None
    )
    for line in report(problems, prefix, suggestion):
        print(line, file=sys.stderr)
    return False


def report(problems: Sequence[BindError], prefix: str, suggestion: int | None) -> list[str]:
    """The lines to print: one per port that cannot be bound, then the offset that works."""
    lines = [f"{prefix}: {e}" for e in problems]
    if suggestion is not None and any(e.in_use for e in problems):
        lines.append(f"{prefix}: every port of the run is free now with --port-offset {suggestion}")
    return lines


def offset_config(path: Path, offset: int, var_dir: Path) -> Path:
    """Write the configuration ``path`` with ``pipeline.port_offset = offset`` (and its data
    directory made absolute) into ``var_dir``; returns the new file's path. A bad offset
    fails here, naming ``pipeline.port_offset`` and ``--port-offset``."""
    cfg = configs.load(path)  # errors name the original file
    data = configs.read_dict(path)
    pipeline = data.setdefault("pipeline", {})
    pipeline["port_offset"] = offset
    pipeline["data_dir"] = str(configs.data_root(cfg))
    config_mod.from_dict(data, source=f"{path} with --port-offset {offset}")
    out = var_dir / f"{path.stem}.port-offset-{offset}.toml"
    configs.write(out, data)
    return out
