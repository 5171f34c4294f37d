"""A gateway killed before its first bar keeps its topics' epochs: a consumer that saw the
empty topics is not told "the store was rebuilt" when it comes back. Found by the chaos test
(tests/integration/test_chaos.py): the empty replica stores were served (their ids are the
epochs) before any commit named them, so a restart recreated them with new ids."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from barstream.services.gateway.client import GatewayClient
from tests.support.bar_source import Procs
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(120)


def _epochs(procs: Procs, timeout_s: float = 30.0) -> dict[str, str]:
    def epochs() -> dict[str, str]:
        with GatewayClient(procs.publish, procs.requests, timeout_s=2) as gw:
            return {t.topic: t.epoch for t in gw.list_topics()}

    return wait_for(epochs, timeout_s, what="the gateway to answer", ignore=(TimeoutError,))


def test_kill_before_the_first_bar_keeps_the_epochs(ipc_dir: Path) -> None:
    procs = Procs(ipc_dir)
    try:
        procs.start_gateway()  # no upstream: no bar will arrive
        before = _epochs(procs)
        assert before and all(before.values()), before
        procs.kill("gateway", signal.SIGKILL)
        procs.start_gateway()
        after = _epochs(procs)
        assert after == before, "a restart changed the epochs of topics a consumer has seen"
    finally:
        procs.stop_all()
