"""Running the pipeline under supervisord: the environment supervisord.conf reads, starting
and stopping supervisord, and talking to it over its control socket (XML-RPC).

supervisord.conf takes every path from the environment, so one file serves the demo, a
production run and tests (each with its own config, run directory and ports)::

    BARSTREAM_CONFIG        pipeline configuration (TOML) passed to every service
    BARSTREAM_VAR           run directory: control socket, pid file, logs under log/
    BARSTREAM_DEMO          "true": also autostart the fake Dukascopy upstream (demo mode)
    BARSTREAM_EVENTS_PORT   Prometheus port of the supervisor event listener

The control socket is in the private run directory ``BARSTREAM_VAR/run`` (0700); with
``BARSTREAM_SUPERVISOR_INET=HOST:PORT`` an inet server is added and both ask for a
password (a generated secret); started as root, the services run as ``BARSTREAM_RUN_AS`` (default the
``barstream`` account when it exists): ``barstream.supervise_access``.

Programs live in the group ``barstream`` (``barstream:downloader`` …); the fake upstream is
``barstream:fake_upstream``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, cast

from barstream import paths
from barstream import supervise_access as access
from barstream.shared.config import SERVICES
from barstream.shared.errors import SupervisorError

GROUP: Final = "barstream"
FAKE: Final = "fake_upstream"
API: Final = "api"  # barstream serve: the HTTP API and chart
EVENTS: Final = "barstream_events"
DEFAULT_EVENTS_PORT: Final = 9100
#: supervisord states of a process that count as "up".
UP_STATES: Final = frozenset({"RUNNING"})


def default_var_dir() -> Path:
    return paths.var_dir()


def default_conf() -> Path:
    """The supervisord.conf shipped with the package."""
    return paths.resource("supervisord.conf")


def program(name: str) -> str:
    """The supervisord name of a service or of the fake upstream (``barstream:NAME``)."""
    return name if ":" in name or name == EVENTS else f"{GROUP}:{name}"


#: The bare program names ``barstream ctl`` accepts for ``barstream:NAME``.
PROGRAMS: Final = frozenset({*SERVICES, FAKE, API})


def ctl_args(args: Sequence[str]) -> list[str]:
    """supervisorctl arguments with each bare program name (``gateway``, ``fake_upstream``)
    written ``barstream:NAME``; every other word as given: actions (``status``, ``restart``,
    ``tail`` …), options, ``all`` (supervisorctl's every program, the event listener
    included), ``barstream:*``, ``barstream_events``."""
    return [program(a) if a in PROGRAMS else a for a in args]


@dataclass
class Supervisor:
    """One supervisord instance: its config file, environment and control socket."""

    config_path: Path
    var_dir: Path
    demo: bool = False
    events_port: int = DEFAULT_EVENTS_PORT
    conf: Path = field(default_factory=default_conf)
    #: HOST:PORT of an inet control server ("" none; BARSTREAM_SUPERVISOR_INET)
    inet: str = field(default_factory=access.default_inet)
    #: the account the services run as when supervisord starts as root (None: do not drop;
    #: BARSTREAM_RUN_AS, else ``barstream`` if it exists: barstream.supervise_access)
    run_as: str | None = field(default_factory=access.default_run_as)

    @property
    def run_dir(self) -> Path:
        """The private run directory (0700): the control socket, its secret, the included
        configuration (barstream.supervise_access)."""
        return self.var_dir / "run"

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "supervisor.sock"

    def prepare(self) -> None:
        """Before supervisord starts: the private run directory, the control secret, the
        included configuration (credentials, inet server, ``user=`` of every program) and,
        when the services drop to an account, the data directory given to it."""
        access.private_dir(self.run_dir)
        password = access.secret(self.run_dir)
        assert password is not None
        run_as = self.run_as if os.geteuid() == 0 else None
        if run_as:
            user = access.account(run_as)
            why = access.cannot_run(user, sys.executable, paths.home())
            if why is not None and run_as == access.ACCOUNT and access.RUN_AS_ENV not in os.environ:
                print(f"barstream: the services run as root: {why}", file=sys.stderr)
                run_as = None
            elif why is not None:
                raise SupervisorError(
                    f"cannot run the services as {run_as}: {why}; make the interpreter and "
                    f"the installation readable by {run_as}, or set {access.RUN_AS_ENV}= "
                    "to run them as root"
                )
        if run_as:
            from barstream import configs

            data = configs.data_root(configs.load(self.config_path))
            access.chown_tree(data, user.pw_uid, user.pw_gid)
        sections = [f"program:{n}" for n in (FAKE, *SERVICES, API)] + [f"eventlistener:{EVENTS}"]
        access.write_include(
            self.run_dir, access.include_text(password, self.inet, run_as, sections)
        )
        ctl = self.run_dir / access.CTL_FILE
        if self.inet:
            access.write_private(ctl, access.ctl_conf_text(self.socket_path.resolve(), password))
        else:
            ctl.unlink(missing_ok=True)

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            BARSTREAM_CONFIG=str(self.config_path.resolve()),
            BARSTREAM_VAR=str(self.var_dir.resolve()),
            BARSTREAM_DEMO="true" if self.demo else "false",
            BARSTREAM_EVENTS_PORT=str(self.events_port),
            BARSTREAM_HOME=str(paths.home()),
            BARSTREAM_PYTHON=sys.executable,
        )
        return env

    # -- supervisord --------------------------------------------------------------------

    def start(self, *, foreground: bool) -> subprocess.Popen[bytes] | None:
        """Start supervisord. Foreground: a child process (``-n``) the caller stops with
        ``shutdown``; else it daemonizes and this returns once its socket answers."""
        self.check_not_running()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)]
        if foreground:
            proc = subprocess.Popen(
                [*cmd, "-n"],
                env=self.env(),
                cwd=paths.home(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches us only; we stop it with TERM
            )
            self.wait_socket(15.0, proc)
            return proc
        done = subprocess.run(
            cmd, env=self.env(), cwd=paths.home(), capture_output=True, check=False
        )
        if done.returncode != 0:
            raise SupervisorError(
                f"supervisord exited {done.returncode}: {done.stderr.decode(errors='replace')}"
            )
        self.wait_socket(15.0)
        return None

    def check_not_running(self) -> None:
        """Raise ``SupervisorError`` if this run directory's supervisord already answers."""
        if self.running():
            raise SupervisorError(
                f"supervisord already answers on {self.socket_path}; "
                "stop it first (barstream ctl shutdown)"
            )

    def wait_socket(self, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SupervisorError(f"supervisord exited {proc.returncode}: {err.strip()}")
            if self.running():
                return
            time.sleep(0.05)
        raise SupervisorError(f"supervisord did not answer on {self.socket_path} in {timeout_s}s")

    def running(self) -> bool:
        if not self.socket_path.exists():
            return False
        try:
            return str(self.rpc().supervisor.getState()["statename"]) == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def shutdown(
        self, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 90.0
    ) -> None:
        """Stop every program (TERM, their stopwaitsecs) and supervisord itself."""
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise SupervisorError(f"supervisord did not stop in {timeout_s}s; killed") from None
            return
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc().supervisor.shutdown()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.socket_path.exists() and self.running():
            time.sleep(0.1)
        pid_file = self.var_dir / "supervisord.pid"
        while time.monotonic() < deadline and pid_file.exists():
            time.sleep(0.1)

    # -- control ------------------------------------------------------------------------

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        user, password = access.credentials(self.run_dir) or (None, None)
        transport = SupervisorTransport(user, password, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def processes(self) -> dict[str, dict[str, Any]]:
        """``group:name`` → supervisord's process info (statename, pid, description …)."""
        infos = cast(list[dict[str, Any]], self.rpc().supervisor.getAllProcessInfo())
        out: dict[str, dict[str, Any]] = {}
        for info in infos:
            name = str(info["name"])
            group = str(info["group"])
            out[name if group == name else f"{group}:{name}"] = info
        return out

    def wait_running(self, names: Sequence[str], timeout_s: float) -> dict[str, str]:
        """Wait until every named program is RUNNING; returns the last states seen."""
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while True:
            procs = self.processes()
            states = {n: str(procs.get(program(n), {}).get("statename", "ABSENT")) for n in names}
            if all(s == "RUNNING" for s in states.values()):
                return states
            if any(s == "FATAL" for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(0.2)

    def ctl(self, args: Sequence[str]) -> int:
        """Run supervisorctl with this instance's environment (output to our terminal);
        bare program names are accepted (:func:`ctl_args`)."""
        ctl_conf = self.run_dir / access.CTL_FILE  # with the credentials, when asked for
        conf = ctl_conf if access.credentials(self.run_dir) else self.conf
        cmd = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(conf), *ctl_args(args)]
        return subprocess.call(cmd, env=self.env(), cwd=paths.home())


def service_programs(*, demo: bool) -> list[str]:
    return ([FAKE] if demo else []) + list(SERVICES) + [API]
