"""A ZeroMQ bind failure is no traceback: the service names the configuration key that holds
the address, says what to do and exits EXIT_USAGE (2: fix the configuration or stop the
other process; supervisord's retries end in FATAL, no restart loop of tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from barstream.shared.errors import EXIT_USAGE
from tests.hostile.support import config, write
from tests.support.ops import REPO, free_port


def run(service: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"barstream.services.{service}", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("service", "key"),
    [("gateway", "publish"), ("gateway", "requests"), ("resampler", "endpoints.feed")],
)
def test_address_in_use_names_the_key(service: str, key: str, ipc_dir: Path) -> None:
    data = config(ipc_dir, upstream="none")
    address = f"tcp://127.0.0.1:{free_port()}"
    section = data[service]
    if key == "endpoints.feed":
        section["endpoints"]["feed"] = address
    else:
        section[key] = address
    cfg = write(ipc_dir / "c.toml", data)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    holder = ctx.socket(zmq.ROUTER)
    holder.bind(address)
    try:
        done = run(service, cfg)
    finally:
        holder.close(linger=0)
        ctx.destroy(linger=0)
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr and "ZMQError" not in done.stderr, done.stderr
    assert f"{service}.{key} = '{address}': Address already in use" in done.stderr, done.stderr
    assert "another barstream or program holds it" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "address", ["tcp://256.1.1.1:7110", "tcp://127.0.0.1:notaport", "nonsense://x"]
)
def test_a_bad_address_names_the_key(address: str, ipc_dir: Path) -> None:
    data = config(ipc_dir, upstream="none")
    data["gateway"]["publish"] = address
    done = run("gateway", write(ipc_dir / "c.toml", data))
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"gateway.publish = '{address}'" in done.stderr, done.stderr
