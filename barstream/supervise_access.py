"""Who may talk to supervisord, and whom the services run as.

``Supervisor.start`` (barstream.supervise) calls ``prepare`` before supervisord starts:

- **a private run directory**: ``BARSTREAM_VAR/run`` is made mode 0700 (an existing one is
  set back to 0700; one owned by another user is refused); supervisord's control socket is
  ``run/supervisor.sock``, itself 0700 (``chmod=0700`` in supervisord.conf). Another local
  user cannot reach the socket at all;
- **a username and password when an inet port is configured**
  (``BARSTREAM_SUPERVISOR_INET=HOST:PORT``): a secret generated once
  (``run/supervisor.secret``, 0600, ``secrets.token_urlsafe``) is the password of user
  ``barstream`` on the inet server and on the unix socket, so supervisord no longer logs
  "running without any HTTP authentication checking" for either; ``barstream ctl`` runs
  supervisorctl with ``-c run/supervisorctl.conf`` (0600, the credentials: supervisorctl
  reads no ``[include]`` and a password in argv is visible to every user), and
  ``Supervisor.rpc`` sends them. Without an inet port the unix socket, reachable only
  through the 0700 directory, asks for none (plain ``supervisorctl -c supervisord.conf``
  as its owner keeps working);
- **an unprivileged account for the services** when supervisord starts as root: every
  program gets ``user=ACCOUNT`` — ``BARSTREAM_RUN_AS`` (empty: do not drop), else the
  ``barstream`` account when it exists (``useradd --system --no-create-home barstream``),
  else none (the services run as root, as before: CI and containers keep working). The
  account must be able to run the interpreter and read the installation (``cannot_run``
  tries it for real): if not, an account named by ``BARSTREAM_RUN_AS`` (or given to
  ``Supervisor``) is refused with the reason, the default ``barstream`` account is skipped
  with a warning on stderr (the services run as root). The
  data directory is chown'd to that account (recursively, at each start: a rebuild run as
  root may have added files); supervisord itself writes the logs. Directories of ``ipc://``
  endpoints must be writable by the account (they are not chown'd: they may be shared).

These settings go to ``run/supervisord.d/barstream.conf`` (0600), which supervisord.conf
includes (``[include]``): supervisord.conf itself stays one file for every run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from barstream.shared.errors import SupervisorError

#: The user name of the control servers' basic authentication.
USERNAME: Final = "barstream"
#: The account the services run as when supervisord starts as root, if it exists.
ACCOUNT: Final = "barstream"
RUN_AS_ENV: Final = "BARSTREAM_RUN_AS"
INET_ENV: Final = "BARSTREAM_SUPERVISOR_INET"
SECRET_FILE: Final = "supervisor.secret"
INCLUDE_DIR: Final = "supervisord.d"
INCLUDE_FILE: Final = "barstream.conf"
CTL_FILE: Final = "supervisorctl.conf"


def default_run_as() -> str | None:
    """``BARSTREAM_RUN_AS`` (empty: None), else ``barstream`` when supervisord would start
    as root and that account exists, else None."""
    if RUN_AS_ENV in os.environ:
        return os.environ[RUN_AS_ENV].strip() or None
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(ACCOUNT)
    except KeyError:
        return None
    return ACCOUNT


def default_inet() -> str:
    return os.environ.get(INET_ENV, "").strip()


def check_inet(inet: str) -> tuple[str, int]:
    """``HOST:PORT`` → its parts; anything else is a SupervisorError naming the variable."""
    host, sep, port = inet.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SupervisorError(f"{INET_ENV}={inet!r}: not HOST:PORT (e.g. 127.0.0.1:9001)")
    return host, int(port)


def private_dir(path: Path) -> Path:
    """``path`` made (parents too) and set to mode 0700; owned by another user: refused."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise SupervisorError(
            f"{path}: owned by uid {st.st_uid}, not by us (uid {os.geteuid()}): "
            "supervisord's private run directory must be ours; remove it or run as its owner"
        )
    os.chmod(path, 0o700)
    return path


def secret(run_dir: Path, *, create: bool = True) -> str | None:
    """The control password (``run/supervisor.secret``, 0600): read, or generated once."""
    path = run_dir / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        os.chmod(path, 0o600)
        return path.read_text().strip() or None
    if not create:
        return None
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def include_text(password: str, inet: str, run_as: str | None, programs: Iterable[str]) -> str:
    """The included configuration: with ``inet``, the inet server and the credentials of
    both control servers; with ``run_as``, ``user=`` of each program (``[section]``)."""
    out = ["; written by barstream (barstream/supervise_access.py) at each start; do not edit\n"]
    if inet:
        host, port = check_inet(inet)
        auth = f"username={USERNAME}\npassword={password}\n"
        out += [f"[unix_http_server]\n{auth}", f"[inet_http_server]\nport={host}:{port}\n{auth}"]
    if run_as:
        out += [f"[{section}]\nuser={run_as}\n" for section in programs]
    return "\n".join(out)


def ctl_conf_text(socket: Path, password: str) -> str:
    """supervisorctl's own configuration with the credentials (supervisorctl reads no
    ``[include]``): ``barstream ctl`` passes it with ``-c``, never the password in argv."""
    return (
        "; written by barstream (barstream/supervise_access.py) at each start; do not edit\n"
        f"[supervisorctl]\nserverurl=unix://{socket}\nusername={USERNAME}\npassword={password}\n"
    )


def credentials(run_dir: Path) -> tuple[str, str] | None:
    """(user, password) when the control servers ask for them (``run/supervisorctl.conf``
    is there: an inet server is configured), else None."""
    if not (run_dir / CTL_FILE).exists():
        return None
    password = secret(run_dir, create=False)
    return (USERNAME, password) if password else None


def write_private(path: Path, text: str) -> Path:
    """``path`` (0600) replaced whole with ``text``."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def write_include(run_dir: Path, text: str) -> Path:
    """``run/supervisord.d/barstream.conf`` (0600, replaced whole)."""
    return write_private(private_dir(run_dir / INCLUDE_DIR) / INCLUDE_FILE, text)


def account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise SupervisorError(
            f"{RUN_AS_ENV}={name!r}: no such account; create it (useradd --system "
            f"--no-create-home {name}) or set {RUN_AS_ENV}= to run the services as root"
        ) from None


def cannot_run(user: pwd.struct_passwd, python: str, home: Path) -> str | None:
    """Why ``user`` cannot run the services (``python -c 'import barstream.services'`` in
    ``home`` as that user, for real: an interpreter or checkout under a private home
    directory is the usual reason), or None when it can. Needs root."""
    try:
        done = subprocess.run(
            [python, "-c", "import barstream.services.gateway"],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            cwd=home,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"{python} as {user.pw_name} in {home}: {e}"
    if done.returncode == 0:
        return None
    last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return f"{python} -c 'import barstream' as {user.pw_name} in {home}: {last}"


def chown_tree(root: Path, uid: int, gid: int) -> int:
    """Give ``root`` and everything under it (not following links) to uid:gid; returns the
    entries changed."""
    if not root.exists():
        root.mkdir(parents=True)
    changed = 0
    for top, dirs, files in os.walk(root):
        for entry in (top, *(os.path.join(top, n) for n in (*dirs, *files))):
            st = os.lstat(entry)
            if (st.st_uid, st.st_gid) != (uid, gid) and not stat.S_ISLNK(st.st_mode):
                os.chown(entry, uid, gid, follow_symlinks=False)
                changed += 1
    return changed
