"""``barstream demo`` end to end: supervisord, the fake upstream, bars flowing, a clean stop,
exit 0 (slow) — on private ports and a data dir under var/ (the demo resets only there); a
port held by another program refused before anything starts, and ``--port-offset``."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.ops import REPO, cli, free_port, pipeline_config, write_config


@pytest.mark.slow
@pytest.mark.timeout(300)  # the demo command may take up to its 240 s timeout
def test_demo_runs_and_stops_cleanly() -> None:
    with tempfile.TemporaryDirectory(prefix="bs-demo-", dir="/tmp") as d:
        run_dir = Path(d)
        data_dir = REPO / "var" / f"test-demo-{run_dir.name}"
        try:
            data = pipeline_config(run_dir, data_dir, fake_port=free_port())
            config = write_config(run_dir / "demo.toml", data)
            done = cli(
                "demo",
                "-c",
                str(config),
                "--duration",
                "15",
                "--var",
                str(run_dir / "var"),
                "--events-port",
                str(free_port()),
                timeout_s=240,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "last 1m bars of EUR-USD/BID/1m" in done.stdout
            assert "(forming)" in done.stdout  # the live minute
            assert "every service committed and exited" in done.stderr
            verify = cli("verify", "--data-dir", str(data_dir), "-q")
            assert verify.returncode == 0, verify.stdout + verify.stderr
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.timeout(180)
def test_demo_with_a_taken_port_exits_2_naming_it_and_runs_with_the_offset_it_offers() -> None:
    """Another program holds the gateway's metrics port: the demo exits 2 within seconds,
    before supervisord starts, naming the key and the port, and offers an offset with every
    port free; with that ``--port-offset`` the same demo runs beside the holder, every
    service on its port moved by the offset."""
    with tempfile.TemporaryDirectory(prefix="bs-demo-", dir="/tmp") as d:
        run_dir = Path(d)
        data_dir = REPO / "var" / f"test-demo-{run_dir.name}"
        var = run_dir / "var"
        try:
            data = pipeline_config(run_dir, data_dir, fake_port=free_port())
            config = write_config(run_dir / "demo.toml", data)
            port = data["gateway"]["endpoints"]["metrics_port"]
            args = ["demo", "-c", str(config), "--var", str(var), "--events-port", str(free_port())]
            with socket.socket() as held:
                held.bind(("127.0.0.1", port))
                held.listen()
                began = time.monotonic()
                done = cli(*args, "--duration", "1", timeout_s=60)
                took_s = time.monotonic() - began
                assert done.returncode == 2, done.stdout + done.stderr
                assert took_s < 10.0, took_s
                assert f"gateway.endpoints.metrics_port = {port}" in done.stderr
                assert f"127.0.0.1:{port}" in done.stderr
                assert "another barstream or program holds it" in done.stderr
                assert not (var / "log").exists()  # nothing was started
                assert not data_dir.exists()  # nor the data reset
                offered = re.search(r"free now with --port-offset (\d+)", done.stderr)
                assert offered, done.stderr
                offset = int(offered.group(1))

                done = cli(*args, "--duration", "1", "--port-offset", str(offset), timeout_s=150)
                assert done.returncode == 0, done.stdout + done.stderr
            assert "every service committed and exited" in done.stderr
            assert "last 1m bars of EUR-USD/BID/1m" in done.stdout
            derived = var / f"demo.port-offset-{offset}.toml"
            assert str(derived) in done.stderr
            assert f"port_offset = {offset}" in derived.read_text()
            gateway_log = (var / "log" / "gateway.log").read_text()
            assert f"metrics on http://127.0.0.1:{port + offset}/metrics" in gateway_log
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
