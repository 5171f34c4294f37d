"""Live bars over Server-Sent Events (``/v1/stream/…``) against the demo of
tests/support/api_demo.py, the event stream parsed here (tests/support/api.py): each event
is applied as ``series[start_offset:] = bars`` with the checks that make "every bar once,
in order" (no event past the copy's end, ``replaces`` exactly the bars it overwrites, the
id's END the new end), and the copy is compared with the gateway's history at the end:

- across a client reconnect with ``Last-Event-ID`` (bars came meanwhile: the resumed
  stream brings them, no gap, no duplicate); closed-only: every closed bar exactly once;
- across ``barstream ctl restart gateway``: the API's stream resyncs and keeps going;
- time labels in the asked zone; the package's watcher stream survived all of it.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import pytest

from tests.support import api as h
from tests.support.api_demo import SIDE, SYMBOL, Demo
from tests.support.wait import wait_for

STREAM = f"/v1/stream/{SYMBOL}/{SIDE}/1m"


def _gateway_end(demo: Demo) -> int:
    """The gateway's 1m series length (its end offset)."""
    return int(demo.info("1m").count)


@pytest.mark.parametrize("closed_only", [False, True], ids=["all", "closed-only"])
def test_reconnect_with_last_event_id_no_gap_no_duplicate(demo: Demo, closed_only: bool) -> None:
    url = f"{demo.base}{STREAM}?history=30&closed_only={'true' if closed_only else 'false'}"
    series = h.Series()
    timeout = httpx.Timeout(10, read=15)
    with httpx.Client(timeout=timeout) as client:
        first = h.read_stream(client, url, series, 4, 30)
        assert first[0].data["kind"] == "history" and len(first[0].data["bars"]) >= 29
        left_at = first[-1]
        # bars come while the client is away: the resumed stream must bring them
        target = series.end + 3
        wait_for(
            lambda: _gateway_end(demo) >= target,
            30,
            what="two new 1m bars at the gateway",
        )
        second = h.read_stream(client, url, series, 3, 30, headers={"Last-Event-ID": left_at.id})
    resumed = second[0].data
    assert resumed["kind"] == "resync", resumed["kind"]  # no history event: a continuation
    assert series.end >= left_at.end + 2
    events = first + second
    if closed_only:
        # every closed bar exactly once: each event starts where the last one ended
        for prev, ev in itertools.pairwise(events):
            assert ev.data["start_offset"] == prev.end and ev.data["replaces"] == 0, ev.id
        sent = [b for ev in events for b in ev.data["bars"]]
        assert sent == series.bars and not any(b["provisional"] for b in sent)
    else:
        assert resumed["start_offset"] <= left_at.end  # from what changed, not past it
    bars = series.bars
    gw = demo.history("1m", start=bars[0]["ts_ms"])
    h.assert_series_matches(bars, gw, f"reconnect closed_only={closed_only}")
    if closed_only:  # all closed bars in the range, none skipped
        assert [b["ts_ms"] for b in bars] == [int(t) for t in gw["ts_ms"][: len(bars)]]


def _pid(demo: Demo) -> str:
    out = demo.supervisorctl("pid", "barstream:gateway").stdout.strip()
    assert out.isdigit(), out
    return out


def test_stream_keeps_going_across_a_gateway_restart(demo: Demo) -> None:
    watcher = h.Watcher(f"{demo.base}{STREAM}?history=10")
    try:
        watcher.wait_more(2, 20, "before the restart")
        pid = _pid(demo)
        done = demo.ctl("restart", "gateway")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _pid(demo) != pid, "the gateway was not restarted"
        end_at_restart = watcher.series.end
        after = watcher.count()
        # new bars after the restart reach the client through the same HTTP stream
        wait_for(
            lambda: watcher.count() >= after + 3 and watcher.series.end >= end_at_restart + 2,
            60,
            what="the stream delivering bars after the gateway restart",
        )
        kinds = {e.data["kind"] for e in watcher.events[after:]}
        assert kinds <= {"update", "resync"}, kinds
    finally:
        watcher.stop()
    watcher.check()
    bars = watcher.bars()
    h.assert_series_matches(bars, demo.history("1m", start=bars[0]["ts_ms"]), "restart")
    # the package's long-running stream lived through it too
    demo.watcher.wait_more(2, 20, "after the gateway restart")


def test_stream_time_labels_in_the_asked_zone(demo: Demo) -> None:
    series = h.Series()
    with httpx.Client(timeout=httpx.Timeout(10, read=15)) as client:
        (ev,) = h.read_stream(
            client, f"{demo.base}{STREAM}?history=5&tz=Asia/Kolkata", series, 1, 20
        )
    for b in ev.data["bars"]:
        assert b["time"] == h.label(b["ts_ms"], "Asia/Kolkata") and b["time"].endswith("+05:30")


def test_the_watcher_stream_equals_the_gateway(demo: Demo) -> None:
    """The stream the package read from its start (through the hostile requests and the
    gateway restart): one event after another, no reset, equal to the gateway's series."""
    demo.watcher.wait_more(2, 20, "at the end")
    bars: list[dict[str, Any]] = demo.watcher.bars()
    assert len(bars) >= 20 + 5
    h.assert_series_matches(bars, demo.history("1m", start=bars[0]["ts_ms"]), "watcher")
    assert demo.watcher.events[0].data["kind"] == "history"
    assert time.monotonic() - demo.watcher.events[-1].at < 10
