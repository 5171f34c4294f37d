"""``python -m bench.universe`` at its smallest useful size: four instrument-sides (EUR-USD
and USD-JPY, both sides) over a year through the five real services; its own check (every
stream's stores equal ``resample_all`` over the aggregator's 1m, the gateway's equal the
resampler's) passes and its table has the figures README quotes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from barstream.paths import real_data_dir
from tests.support.ops import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_universe_bench_runs_verified_and_reports() -> None:
    if not (real_data_dir() / "histdata-m1").is_dir():
        pytest.skip("../shared/data/real/histdata-m1 is absent: the universe is made from it")
    done = subprocess.run(
        [sys.executable, "-m", "bench.universe", "--n", "1,4", "--years", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        m = re.match(r"^(.*?)\s{2,}([\d,.]+)\s{2}", line)
        assert m, line
        rows[m.group(1)] = float(m.group(2).replace(",", ""))
    assert rows["universe 1y, N=4: wall"] > 0
    assert "universe 1y, N=4: marginal wall per added instrument-side" in rows
    for service in ("downloader", "transformer", "aggregator", "resampler", "gateway"):
        assert rows[f"universe 1y, N=4: {service} peak anon RSS"] > 5  # MiB: it was sampled
    per_side = rows["universe 1y, N=4: stores on disk per instrument-side"]
    assert 0.01 < per_side < 1.0  # GiB: a year of every timeframe in five services
    assert "N=4: " in done.stderr and "1m bars in" in done.stderr
