"""``barstream demo`` end to end (slow): supervisord, the fake upstream, bars flowing, a
clean stop, exit 0 — on private ports and a data dir under var/ (the demo resets only there)."""

from __future__ import annotations

import shutil
import tempfile
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
