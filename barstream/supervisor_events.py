"""supervisord event listener: process state changes → Prometheus metrics.

Run by supervisord (``[eventlistener:barstream_events]``, ``events=PROCESS_STATE``)::

    python -m barstream.supervisor_events --port 9100

The eventlistener protocol (supervisor docs, "Events"): the listener writes ``READY\\n`` on
stdout; supervisord sends one header line (``ver:3.0 server:supervisor serial:N pool:…
eventname:PROCESS_STATE_RUNNING len:L``) then ``L`` bytes of payload (``processname:x
groupname:g from_state:STARTING pid:123``); the listener answers ``RESULT 2\\nOK`` and is
READY again. Stdout belongs to the protocol: logs go to stderr only.

Metrics (served at ``http://HOST:PORT/metrics``)::

    barstream_process_state{program,state}              1 for the current state, 0 else
    barstream_process_transitions_total{program,to_state}
    barstream_process_restarts_total{program}           STARTING after EXITED or BACKOFF
    barstream_process_unexpected_exits_total{program}   EXITED with expected:0
    barstream_events_total{eventname}                   every event seen
    process_*, python_*                                 the listener's own process (memory, fds)

No ``*_created`` series: the registry comes from ``barstream.shared.metrics``, whose import
turns them off.

``program`` is ``group:name`` (``barstream:downloader``), or the name for a lone program.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import IO, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from barstream.shared.metrics import runtime_registry

log = logging.getLogger("barstream.supervisor_events")

STATES: Final = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
PREFIX: Final = "PROCESS_STATE_"


def parse_header(line: str) -> dict[str, str]:
    """``"ver:3.0 server:supervisor … len:54"`` → a dict (tokens split at the first colon)."""
    out: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            out[key] = value
    return out


def parse_payload(data: str) -> dict[str, str]:
    """The payload's first line of ``key:value`` tokens (PROCESS_STATE has only one)."""
    return parse_header(data.split("\n", 1)[0])


class StateMetrics:
    """Process-state metrics on one registry (pure; fed one event at a time)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or runtime_registry()
        r = self.registry
        self.state = Gauge(
            "barstream_process_state",
            "supervisord state of each program: 1 for the current state, 0 for the others.",
            ["program", "state"],
            registry=r,
        )
        self.transitions = Counter(
            "barstream_process_transitions",
            "Process state transitions, by the state entered.",
            ["program", "to_state"],
            registry=r,
        )
        self.restarts = Counter(
            "barstream_process_restarts",
            "Starts after an exit or a failed start (supervisord's automatic restarts).",
            ["program"],
            registry=r,
        )
        self.unexpected_exits = Counter(
            "barstream_process_unexpected_exits",
            "Exits with an exit code not in the program's exitcodes.",
            ["program"],
            registry=r,
        )
        self.events = Counter(
            "barstream_events", "supervisord events seen, by name.", ["eventname"], registry=r
        )

    def apply(self, eventname: str, payload: dict[str, str]) -> None:
        self.events.labels(eventname).inc()
        if not eventname.startswith(PREFIX):
            return
        to_state = eventname[len(PREFIX) :]
        name = payload.get("processname", "?")
        group = payload.get("groupname", name)
        prog = name if group == name else f"{group}:{name}"
        for state in STATES:
            self.state.labels(prog, state).set(1 if state == to_state else 0)
        self.transitions.labels(prog, to_state).inc()
        if to_state == "STARTING" and payload.get("from_state") in ("EXITED", "BACKOFF"):
            self.restarts.labels(prog).inc()
        if to_state == "EXITED" and payload.get("expected") == "0":
            self.unexpected_exits.labels(prog).inc()
        log.info("%s: %s -> %s", prog, payload.get("from_state", "?"), to_state)


def listen(metrics: StateMetrics, stdin: IO[str], stdout: IO[str]) -> None:
    """The eventlistener loop; returns when supervisord closes our stdin."""
    while True:
        stdout.write("READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:
            return
        header = parse_header(line)
        try:
            length = int(header.get("len", "0"))
        except ValueError:
            length = 0
        payload = stdin.read(length) if length else ""
        try:
            metrics.apply(header.get("eventname", "UNKNOWN"), parse_payload(payload))
        except Exception:  # a bad event must not stall supervisord's event queue
            log.exception("could not handle event %r %r", line, payload)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m barstream.supervisor_events",
        description="supervisord event listener: PROCESS_STATE events as Prometheus metrics "
        "(run by supervisord; stdout speaks the eventlistener protocol, logs go to stderr).",
    )
    parser.add_argument("--port", type=int, default=9100, help="metrics port (default 9100)")
    parser.add_argument("--host", default="127.0.0.1", help="metrics address (default 127.0.0.1)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s events %(levelname)s %(message)s"
    )
    metrics = StateMetrics()
    start_http_server(args.port, addr=args.host, registry=metrics.registry)
    log.info("metrics on http://%s:%d/metrics", args.host, args.port)
    listen(metrics, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
