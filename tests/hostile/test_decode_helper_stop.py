"""A stopped decode helper (SIGSTOP) does not stop the transformer's flow for more than its
timeout, and the output is exact. Real processes: the fake upstream, the downloader, the
transformer (its helper a child process), the aggregator downstream, over ipc://.

The raw cache holds days past the fake upstream's frozen today, so advancing the upstream's
clock by 40 days makes the downloader journal 40 cached days in one commit: the transformer
gets batches large enough to share with its helper. The helper is SIGSTOPped first: the
transformer's wait for its answer times out (``transformer.decode_helper_timeout_s``), the
helper is killed and counted (``barstream_decode_helper_restarts_total``), the batch is
decoded in the transformer, one warning line; heartbeats reach the aggregator all along and
the new days arrive. After the restart delay a new helper is started. The transformer's
stores equal, byte for byte, those of the same run with the helper left alone (and the
direct decoding of the downloader's journal).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from pathlib import Path

import pytest

from barstream.fake.cache import generate_cache
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.store import Store
from barstream.shared.timeframe import DAY_MS
from tests.support.ops import SCRAPE_ERRORS, sample, scrape
from tests.support.pipeline import (
    Pipeline,
    caught_up,
    decode_journal,
    pipeline,
    wait_caught_up,
)
from tests.support.wait import wait_for

SYMBOLS = ["EUR-USD", "GBP-USD"]
#: In the future: until the fake upstream's Date header says otherwise (its first answer),
#: the downloader's clock (the machine's) has no day of the walk in the past.
START = dt.date(2030, 1, 7)
FIRST_DAYS = 70  # journaled before the helper is stopped
STEP_DAYS = 40  # each later step: this many cached days journaled at once
TIMEOUT_S = 1.0  # transformer.decode_helper_timeout_s
PER_DAY_S = 0.002  # transformer.decode_helper_timeout_per_day_s
#: The longest the aggregator may hear nothing from the transformer while the helper is
#: stopped: the helper's deadline (a batch has at most 64 days), a heartbeat interval
#: (1 s) and slack for a loaded 2-core machine.
MAX_SILENCE_S = TIMEOUT_S + 64 * PER_DAY_S + 1.0 + 2.0


def _metrics_port(p: Pipeline, service: str) -> int:
    def port() -> int | None:
        m = re.search(
            r"metrics on http://[\d.]+:(\d+)/metrics", (p.root / f"{service}.log").read_text()
        )
        return int(m.group(1)) if m else None

    return wait_for(port, 30, what=f"{service}'s metrics port", ignore=(FileNotFoundError,))


def _helper_pid(transformer_pid: int) -> int | None:
    """The transformer's decode helper child that has started (written its READY byte)."""
    try:
        children = Path(f"/proc/{transformer_pid}/task/{transformer_pid}/children").read_text()
    except FileNotFoundError:
        return None
    for pid in map(int, children.split()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            io = Path(f"/proc/{pid}/io").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        wrote = int(re.search(r"wchar: (\d+)", io).group(1))  # type: ignore[union-attr]
        if b"decode_process" in cmd and wrote >= 1:
            return pid
    return None


def _stores(root: Path, symbol: str) -> bytes:
    with Store.open(root / "transformer" / symbol / "BID" / "days.bars", writable=False) as s:
        return bytes(s.snapshot().tobytes())


def _advance(p: Pipeline, days: int) -> None:
    """Move the upstream's clock: the downloader journals the days now past from the raw
    cache, all in one commit (``commit_interval_s`` = 1 s): one large batch a stream."""
    p.control("clock", {"advance_ms": days * DAY_MS})


def _journal_length(p: Pipeline, symbol: str) -> int:
    cp = Checkpoint(p.root / "data" / "downloader" / "checkpoint.json").load()
    mark = cp.stores.get(f"{symbol}/BID/fetch") if cp is not None else None
    return mark.length if mark is not None else 0


def _final_days(p: Pipeline, n: int) -> bool:
    """Every stream's journal holds ``n`` final days (and the live day after them)."""
    return all(_journal_length(p, s) >= n + 1 for s in SYMBOLS)


def _run(root: Path, ipc: Path, *, stop: bool) -> dict[str, bytes]:
    """One run: 70 days, then two steps of 40 (the helper SIGSTOPped before the first when
    ``stop``); returns each stream's transformer store, checked against its journal."""
    today = START + dt.timedelta(days=FIRST_DAYS)
    ipc.mkdir()
    with pipeline(root, ipc, symbols=SYMBOLS, sides=["BID"], start_date=START, end_date=None) as p:
        last = today + dt.timedelta(days=2 * STEP_DAYS + 5)
        for symbol in SYMBOLS:  # past the upstream's today too: journaled as its clock moves
            generate_cache(p.root / "data" / "raw", symbol, "BID", START, last, durable=False)
        p.write_config(live_poll_interval_s=0.2, refetch_days=0)
        text = p.config_path.read_text().replace(
            "commit_interval_s = 0.02", "commit_interval_s = 1.0"
        )
        p.config_path.write_text(
            text.replace(
                "[transformer.endpoints]",
                f"[transformer]\ndecode_helper_timeout_s = {TIMEOUT_S}\n"
                f"decode_helper_timeout_per_day_s = {PER_DAY_S}\n\n[transformer.endpoints]",
            )
        )
        p.start_fake("--start", f"{today.isoformat()}T12:00:00", "--speed", "0")
        for name in ("downloader", "transformer", "aggregator"):
            p.start(name)
        chain = [("transformer", "downloader"), ("aggregator", "transformer")]
        wait_for(lambda: _final_days(p, FIRST_DAYS), 60, what="the first days journaled")
        wait_caught_up(p, chain, 60)
        tport, aport = _metrics_port(p, "transformer"), _metrics_port(p, "aggregator")
        transformer = p.procs["transformer"]

        # The first large batch started the helper; once it is ready, stop it.
        helper = wait_for(
            lambda: _helper_pid(transformer.pid),
            30,
            what="the decode helper to start",
            on_timeout=lambda: p.log_tail("transformer"),
        )
        if stop:
            os.kill(helper, signal.SIGSTOP)
        try:
            in_before = sample(scrape(aport), "barstream_records_in_total") or 0.0
            _advance(p, STEP_DAYS)
            worst = 0.0
            journaled: float | None = None

            def through() -> bool:
                nonlocal worst, journaled
                age = sample(scrape(aport), "barstream_upstream_heartbeat_age_seconds")
                worst = max(worst, age or 0.0)
                assert worst <= MAX_SILENCE_S, (
                    f"the aggregator heard nothing from the transformer for {worst:.1f} s "
                    f"(helper stopped; limit {MAX_SILENCE_S:.1f} s)\n{p.log_tail('transformer')}"
                )
                if journaled is None:
                    if not _final_days(p, FIRST_DAYS + STEP_DAYS):
                        return False
                    journaled = time.monotonic()
                return all(caught_up(p, s, u) for s, u in chain)

            wait_for(
                through,
                90,
                what="the new days to reach the aggregator with the helper stopped",
                ignore=SCRAPE_ERRORS,
                every_s=0.1,
                on_timeout=lambda: p.log_tail("transformer"),
            )
            assert journaled is not None
            took = time.monotonic() - journaled
            assert took <= MAX_SILENCE_S + 3.0, f"the new days took {took:.1f} s to flow"
            in_after = sample(scrape(aport), "barstream_records_in_total") or 0.0
            assert in_after - in_before >= 20_000, "the new days' bars did not arrive"
            restarts = sample(
                scrape(tport), "barstream_decode_helper_restarts_total", reason="timeout"
            )
            assert restarts == (1 if stop else None), p.log_tail("transformer")
            log = (p.root / "transformer.log").read_text()
            lines = [ln for ln in log.splitlines() if f"decode helper (pid {helper})" in ln]
            assert len(lines) == (1 if stop else 0), lines
            if stop:
                assert "did not answer in time" in lines[0] and "killed" in lines[0], lines
                assert _gone(helper), "the stopped helper was not killed"
            print(
                f"helper {'stopped' if stop else 'running'}: new days through {took:.2f} s "
                f"after they were journaled; worst silence downstream {worst:.2f} s "
                f"(limit {MAX_SILENCE_S:.2f} s)"
            )
        finally:
            if stop and not _gone(helper):
                os.kill(helper, signal.SIGKILL)

        # After the restart delay (1 s) the next large batch starts a new helper.
        time.sleep(1.5)  # not a wait for a condition: the restart delay must pass
        _advance(p, STEP_DAYS)
        if stop:
            wait_for(
                lambda: (pid := _helper_pid(transformer.pid)) is not None and pid != helper,
                30,
                what="a new decode helper",
                on_timeout=lambda: p.log_tail("transformer"),
            )
        wait_for(lambda: _final_days(p, FIRST_DAYS + 2 * STEP_DAYS), 60, what="the last days")
        wait_caught_up(p, chain, 60)

        for name in ("aggregator", "transformer"):
            p.kill(name, signal.SIGTERM)
            assert p.procs[name].returncode == 0, p.log_tail(name)

        out = {}
        for symbol in SYMBOLS:
            got = out[symbol] = _stores(p.root / "data", symbol)
            with Store.open(
                p.root / "data" / "downloader" / symbol / "BID" / "fetch.bars", writable=False
            ) as j:
                journal = j.snapshot()
            expected = decode_journal(p.root / "data", symbol, "BID", journal)
            assert got == expected.tobytes(), f"{symbol}: not the journal decoded"
            assert len(journal) >= FIRST_DAYS + 2 * STEP_DAYS + 1
        return out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_stopped_helper_does_not_stop_the_flow(tmp_path: Path, ipc_dir: Path) -> None:
    stopped = _run(tmp_path / "stopped", ipc_dir / "a", stop=True)
    undisturbed = _run(tmp_path / "undisturbed", ipc_dir / "b", stop=False)
    for symbol in SYMBOLS:
        assert stopped[symbol] == undisturbed[symbol], (
            f"{symbol}: differs from the run with no stop"
        )


def _gone(pid: int) -> bool:
    """The process has exited (or is a zombie its parent has not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True
