"""The supervisor event listener under a REAL supervisord: a tiny program is started,
stopped and crashed; the listener's /metrics show every transition."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from barstream.supervisor_events import StateMetrics, parse_header, parse_payload
from tests.support.ops import REPO, SCRAPE_ERRORS, free_port, sample, scrape
from tests.support.wait import wait_for


def test_protocol_parsing() -> None:
    head = parse_header(
        "ver:3.0 server:supervisor serial:21 pool:listener poolserial:10 "
        "eventname:PROCESS_STATE_RUNNING len:54\n"
    )
    assert head["eventname"] == "PROCESS_STATE_RUNNING" and head["len"] == "54"
    m = StateMetrics()
    m.apply(
        "PROCESS_STATE_EXITED",
        parse_payload("processname:a groupname:g from_state:RUNNING expected:0 pid:1"),
    )
    m.apply("PROCESS_STATE_STARTING", parse_payload("processname:a groupname:g from_state:EXITED"))
    assert m.restarts.labels("g:a")._value.get() == 1
    assert m.unexpected_exits.labels("g:a")._value.get() == 1
    assert m.state.labels("g:a", "STARTING")._value.get() == 1
    assert m.state.labels("g:a", "EXITED")._value.get() == 0


# The programs under supervisord: "sleeper" runs until stopped; "crasher" exits with 3 once
# past startsecs (its sleep is that lifetime, not a wait of the test).
CONF = """
[unix_http_server]
file={run}/s.sock

[supervisord]
logfile={run}/supervisord.log
pidfile={run}/supervisord.pid
childlogdir={run}
directory={repo}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{run}/s.sock

[program:sleeper]
command={py} -c "import time; time.sleep(600)"
autostart=false
startsecs=1
stopsignal=TERM

[program:crasher]
command={py} -c "import time, sys; time.sleep(1.2); sys.exit(3)"
autostart=false
autorestart=unexpected
exitcodes=0
startsecs=1
startretries=0

[eventlistener:barstream_events]
command={py} -m barstream.supervisor_events --port {port}
directory={repo}
events=PROCESS_STATE
stderr_logfile={run}/events.log
"""


@pytest.fixture
def supervisord() -> Iterator[tuple[Path, int]]:
    with tempfile.TemporaryDirectory(prefix="bs-ev-", dir="/tmp") as d:
        run = Path(d)
        port = free_port()
        conf = run / "supervisord.conf"
        conf.write_text(CONF.format(run=run, repo=REPO, py=sys.executable, port=port))
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(
                lambda: scrape(port) is not None,
                20,
                what="the event listener's metrics",
                ignore=SCRAPE_ERRORS,
            )
            yield conf, port
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def ctl(conf: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.stdout + done.stderr


def test_listener_reports_transitions(supervisord: tuple[Path, int]) -> None:
    conf, port = supervisord
    assert "started" in ctl(conf, "start", "sleeper")

    def state(prog: str, st: str) -> float | None:
        return sample(scrape(port), "barstream_process_state", program=prog, state=st)

    wait_for(
        lambda: state("sleeper", "RUNNING") == 1, 15, what="sleeper RUNNING", ignore=SCRAPE_ERRORS
    )
    assert "stopped" in ctl(conf, "stop", "sleeper")
    wait_for(
        lambda: state("sleeper", "STOPPED") == 1, 15, what="sleeper STOPPED", ignore=SCRAPE_ERRORS
    )
    s = scrape(port)
    assert state("sleeper", "RUNNING") == 0
    for to_state in ("STARTING", "RUNNING", "STOPPING", "STOPPED"):
        got = sample(s, "barstream_process_transitions_total", program="sleeper", to_state=to_state)
        assert got == 1, (to_state, got)
    # a crash after startsecs: EXITED (unexpected), then supervisord restarts it
    ctl(conf, "start", "crasher")
    wait_for(
        lambda: (
            (sample(scrape(port), "barstream_process_restarts_total", program="crasher") or 0) >= 1
        ),
        20,
        what="crasher restarted",
        ignore=SCRAPE_ERRORS,
    )
    s = scrape(port)
    assert (sample(s, "barstream_process_unexpected_exits_total", program="crasher") or 0) >= 1
    assert (sample(s, "barstream_events_total", eventname="PROCESS_STATE_EXITED") or 0) >= 1
    ctl(conf, "stop", "crasher")
    # the listener itself answered every event: supervisord still talks to it
    assert "barstream_events" in ctl(conf, "status")
    assert "RUNNING" in ctl(conf, "status", "barstream_events")
