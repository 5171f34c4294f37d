"""DecodeHelper.decode: the transformer's decode helper process and its split of the work.

Whatever the helper does — decodes its share, fails a day, hangs (SIGSTOP) or dies mid-batch
— ``decode`` returns exactly ``decode_days`` over the batch; a hung or dead helper is noticed
within a bounded time, killed, counted (``on_restart``), logged in one line, and a new one is
started after the restart delay.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time
from collections.abc import Callable

import numpy as np
import pytest

from barstream.fake.encoding import encode_candles
from barstream.fake.generators import RandomWalkGenerator
from barstream.services.downloader.source import day_start_ms
from barstream.services.transformer.bulk import decode_days
from barstream.services.transformer.decode_pool import Decoded, DecodeHelper, Item, decode_here
from barstream.shared.errors import PayloadInvalid
from tests.support.wait import wait_for

START = dt.date(2024, 3, 4)
LOGGER = "barstream.transformer"


def _items(days: int, bad: int | None = None) -> list[Item]:
    gen = RandomWalkGenerator(seed=11)
    out: list[Item] = []
    for i in range(days):
        day = START + dt.timedelta(days=i)
        body = encode_candles(gen.day("EUR-USD", "BID", day), empty_timestamp_ms=day_start_ms(day))
        if i == bad:
            body = body.replace(b'"shift":60000', b'"shift":60001')
        out.append((day_start_ms(day), False, 100 + i, body))
    return out


def _expected(items: list[Item]) -> list[Decoded]:
    return decode_days(
        [b for *_, b in items],
        symbol="EUR-USD",
        side="BID",
        day_ms=[d for d, _, _, _ in items],
        live=[lv for _, lv, _, _ in items],
        src_offsets=[o for _, _, o, _ in items],
    )


def _assert_same(got: list[Decoded], want: list[Decoded]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if isinstance(w, PayloadInvalid):
            assert isinstance(g, PayloadInvalid), i
            assert str(g) == str(w), i
        else:
            assert isinstance(g, np.ndarray), i
            assert g.tobytes() == w.tobytes(), i


class _Local:
    """decode_here, recording how many days each call decodes, with a hook run before its
    first call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.hook: Callable[[], None] | None = None

    def __call__(self, symbol: str, side: str, items: list[Item]) -> list[Decoded]:
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        self.calls.append(len(items))
        return decode_here(symbol, side, items)


def _started(helper: DecodeHelper) -> DecodeHelper:
    helper.start()
    wait_for(helper.ready, 20, what="the decode helper to start", every_s=0.02)
    return helper


def test_decode_shares_the_batch_and_equals_decode_days() -> None:
    items = _items(24, bad=20)  # the bad day lands in the helper's share
    local = _Local()
    helper = _started(DecodeHelper(decode_local=local))
    try:
        got = helper.decode("EUR-USD", "BID", items)
        _assert_same(got, _expected(items))
        assert helper.days > 0, "the helper decoded nothing"
        assert helper.usable
        # the helper's bad day was decoded again here, for the exact error
        assert sum(local.calls) == len(items) - helper.days + 1
    finally:
        helper.close()


def test_small_batch_never_starts_the_helper() -> None:
    helper = DecodeHelper(min_days=16)
    try:
        items = _items(3)
        _assert_same(helper.decode("EUR-USD", "BID", items), _expected(items))
        assert helper._proc is None
    finally:
        helper.close()


def test_hung_helper_is_detected_in_bounded_time(caplog: pytest.LogCaptureFixture) -> None:
    """A stopped helper (SIGSTOP) never answers: the deadline ends the wait, the batch is
    decoded here, the helper is killed and counted, one warning; batches within the restart
    delay are decoded here at once, and after it a new helper takes its share again."""
    items = _items(20)
    local = _Local()
    reasons: list[str] = []
    helper = _started(
        DecodeHelper(
            answer_timeout_s=1.0,
            timeout_per_day_s=0.0,
            restart_delay_s=1.5,
            decode_local=local,
            on_restart=reasons.append,
        )
    )
    proc = helper._proc
    assert proc is not None
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            began = time.monotonic()
            got = helper.decode("EUR-USD", "BID", items)
            took = time.monotonic() - began
            _assert_same(got, _expected(items))
            assert took < 1.0 + 5.0, f"waited {took:.1f} s for a hung helper"
            assert helper.usable and helper.days == 0
            assert (helper.restarts, reasons) == (1, ["timeout"])
            assert sum(local.calls) == len(items)
            assert proc.poll() is not None, "the hung helper was not killed"
            # within the restart delay: decoded here at once, no helper, no new warning
            began = time.monotonic()
            _assert_same(helper.decode("EUR-USD", "BID", items), _expected(items))
            assert time.monotonic() - began < 1.0
            assert helper._proc is None
        warnings = [r for r in caplog.records if r.name == LOGGER]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        text = warnings[0].getMessage()
        assert f"pid {proc.pid}" in text and "did not answer in time" in text, text
        assert "decoded in the transformer" in text and "restart 1 in 1.5 s" in text, text
        # after the delay the next large batch starts a new helper, used once it is ready
        wait_for(
            lambda: helper.decode("EUR-USD", "BID", items) is not None and helper.ready(),
            20,
            what="a new decode helper",
            every_s=0.1,
        )
        assert helper.pid is not None and helper.pid != proc.pid
        days = helper.days
        _assert_same(helper.decode("EUR-USD", "BID", items), _expected(items))
        assert helper.days > days, "the restarted helper took no work"
        assert helper.restarts == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        helper.close()


def test_helper_killed_mid_batch_is_noticed_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """The helper holds the work (stopped) and is killed while the transformer decodes its
    own share: the closed pipe ends the wait at once, long before the deadline."""
    items = _items(4)  # the helper's share fits a default 64 KiB pipe
    local = _Local()
    helper = _started(DecodeHelper(min_days=2, answer_timeout_s=60.0, decode_local=local))
    proc = helper._proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # it cannot answer before it is killed

    def kill() -> None:  # called after submit, before the transformer's own share: mid-batch
        os.kill(proc.pid, signal.SIGKILL)

    local.hook = kill
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            began = time.monotonic()
            got = helper.decode("EUR-USD", "BID", items)
            took = time.monotonic() - began
        _assert_same(got, _expected(items))
        assert took < 10.0, f"waited {took:.1f} s for a dead helper"
        assert local.calls[0] < len(items), "the helper was not sent its share"
        assert helper.usable and helper.days == 0 and helper.restarts == 1
        assert sum(local.calls) == len(items)  # its share decoded here after all
        assert len([r for r in caplog.records if r.name == LOGGER]) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        helper.close()
