"""Loud about missing history: a raw cache with one bad day (its ``times`` go backwards) and
one day missing. Real processes (``barstream`` commands, the services in drain mode), a
real fake upstream over HTTP for the re-fetch.

1. ``rebuild`` exits 1 naming the held stream (symbol, side, day, field, error, the bars
   held behind it, the commands that re-fetch or skip it) and the gap; ``verify`` too;
   a transformer restarted on those stores says "held" in its metrics;
2. ``skip-day`` refuses a good day; skipping the bad day and the missing one, a running
   downloader journals them as gaps the user chose and the held transformer moves past
   them (the live path); ``rebuild`` lists them as skipped and still exits 1, ``verify
   --allow-skipped`` exits 0; ``status --json`` and the downloader's metrics say so;
   the stores hold the days around them, not them;
3. a good version (``backfill --refetch``) and the missing day (``backfill``) heal it:
   ``rebuild`` exits 0 with every day stored.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest

from barstream import cli as barstream_cli
from barstream.fake.cache import generate_cache
from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.missing import count_bars
from barstream.services.downloader.raw_cache import RawCache
from barstream.services.downloader.service import Downloader
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.service import Transformer
from barstream.shared import config as config_mod
from barstream.shared.record import FLAG_SKIPPED, JOURNAL_DAY, JOURNAL_GAP
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS
from tests.support.ops import REPO, cli, pipeline_config, sample, scrape, write_config

FIRST, LAST = dt.date(2024, 3, 4), dt.date(2024, 3, 13)
BAD = dt.date(2024, 3, 6)  # its times go backwards at index 10
HOLE = dt.date(2024, 3, 11)  # not in the raw cache


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    clock = SimClock(day_start_ms(dt.date(2024, 4, 1)), speed=0.0)
    with FakeUpstream(clock=clock, seed=1, real_dir=None) as up:
        yield up


def make_cache(root: Path) -> set[dt.date]:
    """The generated days FIRST..LAST with BAD broken and HOLE removed; returns the days
    that have bars (not the weekend's)."""
    generate_cache(root, "EUR-USD", "BID", FIRST, LAST, seed=1, durable=False)
    cache = RawCache(root)
    trading = {
        d for d in cache.days("EUR-USD", "BID") if count_bars(cache.get("EUR-USD", "BID", d) or b"")
    }
    assert BAD in trading and HOLE in trading and len(trading) < 10
    bad = root / "EUR-USD" / "BID" / "2024" / f"EUR-USD-BID-{BAD:%Y%m%d}.json"
    body = json.loads(bad.read_bytes())
    body["times"][10] = -3
    bad.write_text(json.dumps(body, separators=(",", ":")))
    (root / "EUR-USD" / "BID" / "2024" / f"EUR-USD-BID-{HOLE:%Y%m%d}.json").unlink()
    return trading


def days_of(data: Path, service: str, tf: str = "1m") -> set[dt.date]:
    with Store.open(data / service / "EUR-USD" / "BID" / f"{tf}.bars", writable=False) as s:
        ts = s.snapshot()["ts_ms"]
    return {dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in np.unique(ts // DAY_MS)}


def ohlcv(data: Path, service: str) -> np.ndarray:
    with Store.open(data / service / "EUR-USD" / "BID" / "1m.bars", writable=False) as s:
        r = s.snapshot()
    return r[["ts_ms", "open", "high", "low", "close", "volume"]].copy()


def in_process(capsys: pytest.CaptureFixture[str]) -> Callable[..., CompletedProcess[str]]:
    """``barstream ARGS`` in this process (no interpreter start-up: the test stays fast);
    ``rebuild`` runs as a real process, its services always do."""

    def run(*args: str) -> CompletedProcess[str]:
        code = barstream_cli.main(list(args))
        cap = capsys.readouterr()
        return CompletedProcess(list(args), code, cap.out, cap.err)

    return run


def drain(config: Path, logs: Path, *services: str) -> None:
    """Run services in drain mode on the existing stores (the live pipeline's code)."""
    procs = {}
    for n in services:
        with (logs / f"{n}.log").open("wb") as log:
            procs[n] = subprocess.Popen(
                [sys.executable, "-m", f"barstream.services.{n}", "-c", str(config), "--drain"],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
    try:
        for n, proc in procs.items():
            proc.wait(timeout=60)
            assert proc.returncode == 0, f"{n}:\n{(logs / f'{n}.log').read_text()[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(180)
def test_a_bad_day_is_loud_then_an_explicit_gap_then_healed(
    tmp_path: Path, fake: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    run = in_process(capsys)
    data = tmp_path / "data"
    trading = make_cache(data / "raw")
    (tmp_path / "run").mkdir()
    cfg = pipeline_config(tmp_path / "run", data, fake_port=fake.port, start_date=str(FIRST))
    cfg["downloader"].update(base_url=fake.url, end_date=LAST, cache_only=True, max_retries=1)
    config = write_config(tmp_path / "c.toml", cfg)
    c = ["-c", str(config)]
    var = ["--var", str(tmp_path / "var")]

    # 1. held and a gap: rebuild and verify exit 1, naming both and what to do
    done = cli("rebuild", *c, "-q", *var)
    assert done.returncode == 1, done.stdout + done.stderr
    held = [x for x in done.stdout.splitlines() if x.startswith("HELD ")]
    assert len(held) == 1, done.stdout
    assert held[0].startswith(
        "HELD    EUR-USD/BID 2024-03-06: held by a bad payload: field times[10]: "
        "step -3: times must strictly increase; nothing from this day on is stored (7 days, "
    ), held
    gap = [x for x in done.stdout.splitlines() if x.startswith("GAP ")]
    assert gap == [
        "GAP     EUR-USD/BID 2024-03-11: gap, no data: not in the raw cache "
        "(a rebuild fetches nothing)"
    ], done.stdout
    todo = done.stdout.splitlines()[done.stdout.splitlines().index(held[0]) + 1]
    assert (
        f"barstream backfill -c {config} --refetch --start 2024-03-06 --end 2024-03-06 "
        "--symbols EUR-USD --sides BID" in todo
    ), todo
    assert f"barstream skip-day -c {config} --symbol EUR-USD --side BID --day 2024-03-06" in todo
    assert "% short" in done.stderr and "INCOMPLETE" in done.stderr, done.stderr
    assert days_of(data, "aggregator") == {FIRST, FIRST + dt.timedelta(days=1)}
    checked = run("verify", *c, "-q")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert held[0] in checked.stdout.splitlines() and gap[0] in checked.stdout.splitlines()
    assert run("verify", *c, "-q", "--allow-skipped").returncode == 1  # nothing was skipped
    transformer = Transformer(config_mod.load(config), serve_metrics=False)
    try:  # restarted, it still says so
        got = transformer.metrics.registry.get_sample_value(
            "barstream_held_streams", {"symbol": "EUR-USD", "side": "BID", "timeframe": "fetch"}
        )
        assert got == 1.0
    finally:
        transformer.stores.close()
        transformer.helper.close()
        transformer.ctx.destroy(linger=0)

    # 2. the user's decision: an explicit gap, applied by a running downloader
    good = run("skip-day", *c, "--symbol", "EUR-USD", "--side", "BID", "--day", "2024-03-05")
    assert good.returncode == 2 and "decodes fine" in good.stderr, good.stderr
    for day in (BAD, HOLE):
        done = run(
            "skip-day",
            *c,
            "--symbol",
            "EUR-USD",
            "--side",
            "BID",
            "--day",
            str(day),
            "--reason",
            "no good version upstream",
        )
        assert done.returncode == 0, done.stderr
    drain(config, tmp_path, "downloader", "transformer", "aggregator")
    with Store.open(data / "downloader" / "EUR-USD" / "BID" / "fetch.bars", writable=False) as s:
        journal = s.snapshot()
    tail = journal[-2:]  # appended after the days: the two decisions, in date order
    assert [int(k) for k in tail["kind"]] == [JOURNAL_GAP, JOURNAL_GAP]
    assert (tail["flags"] & FLAG_SKIPPED).all()
    assert [int(t) for t in tail["ts_ms"]] == [day_start_ms(BAD), day_start_ms(HOLE)]
    live_path = ohlcv(data, "aggregator")
    expected_days = trading - {BAD, HOLE}
    assert days_of(data, "aggregator") == expected_days

    done = cli("rebuild", *c, "-q", *var)
    assert done.returncode == 1, done.stdout + done.stderr
    skipped = [x for x in done.stdout.splitlines() if x.startswith("SKIPPED ")]
    assert len(skipped) == 2 and not any(
        x.startswith(("HELD", "GAP ")) for x in done.stdout.splitlines()
    )
    assert (
        skipped[0].startswith("SKIPPED EUR-USD/BID 2024-03-06: gap skipped by the user on ")
        and "(no good version upstream)" in skipped[0]
    ), skipped
    assert "it was bad: times[10]: step -3" in skipped[0]
    assert "--allow-skipped accepts" in done.stderr, done.stderr
    assert np.array_equal(ohlcv(data, "aggregator"), live_path), "live path != rebuild"
    for service, tf in (
        ("aggregator", "1m"),
        ("resampler", "1m"),
        ("resampler", "1h"),
        ("resampler", "1d"),
        ("gateway", "1m"),
        ("gateway", "1d"),
    ):
        stored = days_of(data, service, tf)
        assert BAD - dt.timedelta(days=1) in stored and BAD + dt.timedelta(days=1) in stored
        assert stored == expected_days, (service, tf, sorted(stored ^ expected_days))
    assert run("verify", *c, "-q").returncode == 1
    accepted = run("verify", *c, "-q", "--allow-skipped")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert skipped[0] in accepted.stdout.splitlines()

    downloader = Downloader(config_mod.load(config), serve_metrics=False)
    try:  # a downloader started on those stores: metrics and status say so
        port = downloader.metrics.serve(cfg["downloader"]["endpoints"]["metrics_port"])
        labels = {"symbol": "EUR-USD", "side": "BID", "timeframe": "fetch"}
        samples = scrape(port)
        assert sample(samples, "barstream_gaps", **labels) == 2.0
        assert sample(samples, "barstream_gaps_skipped", **labels) == 2.0
        shown = run("status", *c, "--json", "--service", "downloader", *var)
        assert shown.returncode == 1, shown.stderr
        st = json.loads(shown.stdout)
        assert st["services"]["downloader"]["up"] is True
        assert st["services"]["downloader"]["skipped"] == {"EUR-USD/BID/fetch": 2}
        assert "downloader: EUR-USD/BID/fetch: 2 gap day(s) (2 skipped by the user)" in st["faults"]
        items = {(m["kind"], m["day"]): m for m in st["missing"]}
        assert set(items) == {("skipped", "2024-03-06"), ("skipped", "2024-03-11")}
        bad = items[("skipped", "2024-03-06")]
        assert (bad["symbol"], bad["side"], bad["reason"]) == (
            "EUR-USD",
            "BID",
            "no good version upstream",
        )
        assert bad["bars"] > 1000 and bad["message"] == skipped[0].removeprefix("SKIPPED ")
    finally:
        downloader.metrics.close()
        downloader.stores.close()
        downloader.ctx.destroy(linger=0)

    # 3. a good version and the missing day heal it
    args = ("--symbols", "EUR-USD", "--sides", "BID", "-q")
    fetched = run("backfill", *c, "--refetch", "--start", str(BAD), "--end", str(BAD), *args)
    assert fetched.returncode == 0 and "1 changed" in fetched.stderr, fetched.stderr
    fetched = run("backfill", *c, "--start", str(HOLE), "--end", str(HOLE), *args)
    assert fetched.returncode == 0, fetched.stderr
    assert (data / "raw" / "_versions" / "EUR-USD" / "BID").is_dir()  # the bad one, kept
    done = cli("rebuild", *c, "-q", *var)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not done.stdout and "INCOMPLETE" not in done.stderr, done.stdout + done.stderr
    assert days_of(data, "resampler", "1d") == days_of(data, "gateway", "1m") == trading
    with Store.open(data / "downloader" / "EUR-USD" / "BID" / "fetch.bars", writable=False) as s:
        assert (s.snapshot()["kind"] == JOURNAL_DAY).all()
    assert run("verify", *c, "-q").returncode == 0
