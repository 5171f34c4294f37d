"""supervisord's control socket is restricted (issue 16): under the REAL supervisord.conf
(demo pipeline), with an inet control port configured and, when the test runs as root,
the services dropped to the ``nobody`` account:

- the run directory and the socket are mode 0700, the secret and the generated
  configuration 0600;
- supervisord's log no longer says "running without any HTTP authentication checking";
- the inet port refuses a request without the password (401) and answers with it;
  ``barstream ctl status`` (the generated supervisorctl.conf) answers;
- another user (``nobody``, as root) cannot connect to the unix socket;
- every service runs as ``nobody`` and works (bars reach the gateway) in a data directory
  given to it.

Without an inet port the socket asks for no password and the log says so for it (the
0700 directory is its protection): ``test_without_inet_the_socket_is_private_only``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from barstream import paths
from barstream import supervise_access as access
from barstream.shared.errors import SupervisorError
from barstream.supervise import Supervisor, service_programs
from tests.support.ops import (
    SCRAPE_ERRORS,
    cli,
    free_port,
    pipeline_config,
    sample,
    scrape,
    write_config,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

NO_AUTH = "running without any HTTP authentication checking"
ROOT = os.geteuid() == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def probe_python() -> str:
    """An interpreter ``nobody`` can run (only the standard library is needed)."""
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        with contextlib.suppress(OSError):
            ok = subprocess.run(
                [python, "-c", "0"], user="nobody", cwd="/", capture_output=True, check=False
            )
            if ok.returncode == 0:
                return python
    pytest.skip("no Python interpreter the nobody account can run")


def logs(sup: Supervisor) -> str:
    """The end of every log of the run (for a failure's message)."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
        for p in sorted(sup.log_dir.glob("*.log"))
    )


@pytest.fixture
def base() -> Iterator[Path]:
    """A run directory others may traverse (the services may run as ``nobody``)."""
    d = Path(tempfile.mkdtemp(prefix="bs-access-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start(base: Path, *, inet: str, run_as: str | None) -> tuple[Supervisor, Path, int]:
    ipc = base / "ipc"  # the ipc endpoints: writable by the services' account
    ipc.mkdir()
    if run_as:
        user = pwd.getpwnam(run_as)
        os.chown(ipc, user.pw_uid, user.pw_gid)
    data = pipeline_config(ipc, base / "data", fake_port=free_port())
    config = write_config(base / "pipeline.toml", data)
    sup = Supervisor(
        config, base / "var", demo=True, events_port=free_port(), inet=inet, run_as=run_as
    )
    return sup, config, int(data["gateway"]["endpoints"]["metrics_port"])


@pytest.mark.timeout(300)
def test_inet_port_needs_the_password_and_the_socket_is_private(base: Path) -> None:
    inet_port = free_port()
    run_as = "nobody" if ROOT else None
    sup, config, gw = start(base, inet=f"127.0.0.1:{inet_port}", run_as=run_as)
    if ROOT and access.cannot_run(pwd.getpwnam("nobody"), sys.executable, paths.home()):
        # here the interpreter or checkout is private (e.g. under /root): refused, saying why
        with pytest.raises(SupervisorError, match="cannot run the services as nobody") as e:
            sup.start(foreground=True)
        assert sys.executable in str(e.value) and "BARSTREAM_RUN_AS=" in str(e.value)
        assert not sup.running()
        sup.run_as = run_as = None
    proc = sup.start(foreground=True)
    try:
        states = sup.wait_running(service_programs(demo=True), 60)
        assert all(s == "RUNNING" for s in states.values()), (states, logs(sup))

        # modes: private directory, socket, secret, generated configuration
        assert sup.socket_path.parent == sup.run_dir == base / "var" / "run"
        assert mode(sup.run_dir) == 0o700 and stat.S_ISSOCK(os.stat(sup.socket_path).st_mode)
        assert mode(sup.socket_path) == 0o700
        for name in (access.SECRET_FILE, access.CTL_FILE, f"{access.INCLUDE_DIR}/barstream.conf"):
            assert mode(sup.run_dir / name) == 0o600, name
        assert mode(sup.run_dir / access.INCLUDE_DIR) == 0o700

        log = (sup.log_dir / "supervisord.log").read_text()
        assert "Included extra file" in log and NO_AUTH not in log, log

        # the inet port: 401 without the password, answers with it
        anonymous: Any = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{inet_port}/RPC2")
        with pytest.raises(xmlrpc.client.ProtocolError) as refused:
            anonymous.supervisor.getState()
        assert refused.value.errcode == 401
        password = (sup.run_dir / access.SECRET_FILE).read_text().strip()
        wrong: Any = xmlrpc.client.ServerProxy(f"http://barstream:nope@127.0.0.1:{inet_port}/RPC2")
        with pytest.raises(xmlrpc.client.ProtocolError):
            wrong.supervisor.getState()
        good: Any = xmlrpc.client.ServerProxy(
            f"http://barstream:{password}@127.0.0.1:{inet_port}/RPC2"
        )
        assert good.supervisor.getState()["statename"] == "RUNNING"
        assert sup.running()  # Supervisor.rpc authenticates on the socket
        ctl = cli("ctl", "-c", str(config), "--var", str(sup.var_dir), "status", "gateway")
        assert ctl.returncode == 0 and "RUNNING" in ctl.stdout, ctl.stdout + ctl.stderr
        assert password not in ctl.stdout + ctl.stderr

        if ROOT:  # another user cannot reach the socket
            probe = subprocess.run(
                [
                    probe_python(),
                    "-c",
                    "import socket, sys; s = socket.socket(socket.AF_UNIX); "
                    f"s.connect({str(sup.socket_path)!r})",
                ],
                user="nobody",
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr

        if run_as:
            nobody = pwd.getpwnam("nobody").pw_uid
            for name, info in sup.processes().items():
                assert uid_of(int(info["pid"])) == nobody, name
            assert os.stat(base / "data").st_uid == nobody
        wait_for(
            lambda: (sample(scrape(gw), "barstream_records_in_total") or 0) > 0,
            120,
            what=f"bars at the gateway (logs in {sup.log_dir})",
            ignore=SCRAPE_ERRORS,
        )
    finally:
        sup.shutdown(proc)


@pytest.mark.timeout(120)
def test_without_inet_the_socket_is_private_only(base: Path) -> None:
    sup, _, _ = start(base, inet="", run_as=None)
    sup.run_dir.mkdir(parents=True)
    os.chmod(sup.run_dir, 0o755)  # an old, open run directory is made private again
    proc = sup.start(foreground=True)
    try:
        assert mode(sup.run_dir) == 0o700 and mode(sup.socket_path) == 0o700
        assert not (sup.run_dir / access.CTL_FILE).exists()
        assert sup.running()  # no password asked
        log = (sup.log_dir / "supervisord.log").read_text()
        assert f"'unix_http_server' {NO_AUTH}" in log
        assert "inet_http_server" not in log
    finally:
        sup.shutdown(proc)


def test_a_bad_inet_setting_is_named() -> None:
    for bad in ("9001", "host:", ":9001", "h:99999", "h:x"):
        with pytest.raises(SupervisorError, match="BARSTREAM_SUPERVISOR_INET"):
            access.check_inet(bad)
    assert access.check_inet("127.0.0.1:9001") == ("127.0.0.1", 9001)
