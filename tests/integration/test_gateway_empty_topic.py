"""A consumer may subscribe before the first bar of a configured topic exists (a fresh
pipeline, a new symbol): it waits and then receives every bar exactly once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream.services.gateway.client import GatewayClient
from barstream.services.gateway.follower import BarUpdate
from tests.support.bar_source import Procs, tmpfs_procs
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def procs(ipc_dir: Path) -> Iterator[Procs]:
    with tmpfs_procs(ipc_dir) as p:
        yield p


def test_subscribe_before_first_bar(procs: Procs) -> None:
    procs.start_gateway()
    items: list[BarUpdate] = []
    errors: list[BaseException] = []
    got_history = threading.Event()

    def consume() -> None:
        try:
            with GatewayClient(procs.publish, procs.requests, timeout_s=10) as gw:
                for item in gw.stream("EUR-USD", "1m", history=10, timeout_s=20):
                    items.append(item)
                    got_history.set()
                    if item.end_offset >= 40 and not item.provisional.any():
                        return
        except BaseException as e:
            errors.append(e)
        finally:
            got_history.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    with GatewayClient(procs.publish, procs.requests, timeout_s=5) as probe:
        wait_for(
            lambda: probe.status().consumers >= 1,
            30,
            what="the streaming consumer to subscribe (it never reached the gateway)",
            every_s=0.02,
        )
        assert all(t.count == 0 for t in probe.list_topics()), "bars exist already"
    procs.start_source(["EUR-USD/BID/1m"], bars=60, ticks=2, pace_s=0.01)
    t.join(timeout=90)
    assert not errors, errors
    assert procs.wait_done()["EUR-USD/BID/1m"] >= 60
    final = procs.gateway_records("EUR-USD/BID/1m")
    assert items[0].start_offset == 0, "history should start at the first bar"
    series = np.zeros(0, final.dtype)
    for item in items:
        assert item.start_offset <= len(series), "gap"
        series = np.concatenate([series[: item.start_offset], item.records])
    assert len(series) >= 40
    assert series.tobytes() == final[: len(series)].tobytes()
