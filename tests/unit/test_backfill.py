"""``barstream backfill`` reports what a one-shot command should: each failed day once with
its reason, the days left undone and the command that asks for them again, exit 1 — and a
host that does not resolve stops it after one request a day in flight."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from barstream import cli
from barstream.fake.clock import SimClock
from barstream.fake.upstream import FakeUpstream
from barstream.services.downloader.source import day_start_ms
from tests.support.ops import write_config

TODAY = dt.date(2026, 3, 10)
#: Promises of the downloader service (gaps retried later) that a one-shot command must not make.
SERVICE_WORDS = ("will retry", "retried later", "becomes a gap")


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(clock=SimClock(day_start_ms(TODAY), speed=0.0), seed=1, real_dir=None) as up:
        yield up


def config(tmp_path: Path, base_url: str) -> Path:
    data = {
        "pipeline": {"data_dir": str(tmp_path / "data")},
        "downloader": {
            "base_url": base_url,
            "max_retries": 1,
            "requests_per_second": 1000.0,
            "burst": 100,
            "timeout_s": 5.0,
        },
    }
    return write_config(tmp_path / "c.toml", data)


def backfill(
    capsys: pytest.CaptureFixture[str], path: Path, start: str, end: str, *more: str
) -> tuple[int, str]:
    code = cli.main(["backfill", "-c", str(path), "--start", start, "--end", end, "-q", *more])
    return code, capsys.readouterr().err


def test_failed_and_missing_days_are_reported_once_with_how_to_run_again(
    tmp_path: Path, fake: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.add_fault("503:*/EUR-USD/BID/2026/3/3:count=always")
    fake.add_fault("404:*/EUR-USD/BID/2026/3/5:count=always")
    path = config(tmp_path, fake.url)
    code, err = backfill(capsys, path, "2026-03-02", "2026-03-05")
    assert code == 1, err
    lines = err.splitlines()
    assert lines[0].startswith("backfill: 2 days fetched"), err
    assert "1 not found, 1 failed" in lines[0]
    failed = [line for line in lines if "EUR-USD/BID/2026-03-03" in line]
    assert failed == [
        "  EUR-USD/BID/2026-03-03: gave up after 2 attempts; last: http: HTTP 503 (HTTP 503)"
    ]
    assert [line for line in lines if "EUR-USD/BID/2026-03-05" in line] == [
        "  EUR-USD/BID/2026-03-05: HTTP 404: no such instrument or day"
    ]
    assert (
        "backfill: 1 day(s) left undone, not in the raw cache; fix the cause and run again "
        "(cached days are skipped): "
        f"barstream backfill -c {path} --start 2026-03-03 --end 2026-03-03 "
        "--symbols EUR-USD --sides BID"
    ) in lines
    assert lines[-1].startswith("backfill: 1 day(s) not found upstream: check the symbol")
    for line in lines:
        assert line.count("backfill:") <= 1, line
    assert not any(word in err for word in SERVICE_WORDS), err

    # the fault gone, the same command fetches what was left and exits 0 (404 aside)
    fake.clear_faults()
    code, err = backfill(capsys, path, "2026-03-03", "2026-03-04")
    assert code == 0, err
    assert err.startswith("backfill: 1 days fetched") and "1 already cached" in err


def test_an_unresolvable_host_stops_the_backfill_and_says_what_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, "http://nonexistent.invalid/")
    code, err = backfill(capsys, path, "2026-01-01", "2026-01-31")
    assert code == 1, err
    lines = err.splitlines()
    head = lines[0]
    assert head.startswith("backfill: 0 days fetched") and "not tried" in head, err
    failed = int(head.split(" failed")[0].rsplit(" ", 1)[1])
    not_tried = int(head.split(" not tried")[0].rsplit(" ", 1)[1])
    assert failed + not_tried == 31 and not_tried > 0  # one request per worker, no more
    day_lines = [line for line in lines if line.startswith("  EUR-USD/BID/")]
    assert len(day_lines) == failed
    for line in day_lines:
        assert line.count("EUR-USD/BID/") == 1
        assert "dns: host 'nonexistent.invalid' does not resolve" in line
        assert "gave up after" not in line  # not retried
    stop = [line for line in lines if line.startswith("backfill: stopped early: ")]
    assert len(stop) == 1 and "check downloader.base_url" in stop[0]
    assert lines[-1].endswith(
        f"barstream backfill -c {path} --start 2026-01-01 --end 2026-01-31 "
        "--symbols EUR-USD --sides BID"
    )
    assert not any(word in err for word in SERVICE_WORDS), err
