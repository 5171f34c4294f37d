"""Features live: a real bar source (the resampler's feed), the features stage and the
gateway as processes, consumers streaming bars joined with their features over ipc://.

- a revision upstream reaches the consumer as one item with ``replaces > 0`` whose
  features are recomputed from the first changed bar;
- kill -9 of the features stage at 24 seeded random moments during the flow: its store ends
  equal to the batch computation over the final bars, and a closed-only consumer got every
  closed bar with its features exactly once, in order, with no gap.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream.services.features import layout
from barstream.services.features.engine import compute
from barstream.services.features.spec import FeatureSet, feature_set
from barstream.services.gateway.client import GatewayClient
from barstream.services.gateway.joined import FeatureBarUpdate, joined
from barstream.shared.record import FLAG_PROVISIONAL, FLAG_REVISED
from barstream.shared.store import Store
from tests.support.bar_source import PYTHON, Procs, tmpfs_procs
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(240)

TOPIC = "EUR-USD/BID/1m"
SET_TOML = """
[[features]]
name = "mix"
timeframes = ["1m"]
indicators = [
  { kind = "returns" }, { kind = "sma", params = { period = 10 } },
  { kind = "ema", params = { period = 8 } }, { kind = "rsi", params = { period = 6 } },
  { kind = "macd", params = { fast = 4, slow = 9, signal = 3 } },
  { kind = "atr", params = { period = 5 } }, { kind = "obv" }, { kind = "adx", params = { period = 5 } },
]
"""
ITEMS = [
    {"kind": "returns", "params": {}},
    {"kind": "sma", "params": {"period": 10}},
    {"kind": "ema", "params": {"period": 8}},
    {"kind": "rsi", "params": {"period": 6}},
    {"kind": "macd", "params": {"fast": 4, "slow": 9, "signal": 3}},
    {"kind": "atr", "params": {"period": 5}},
    {"kind": "obv", "params": {}},
    {"kind": "adx", "params": {"period": 5}},
]


def the_set() -> FeatureSet:
    return feature_set("mix", ["1m"], ITEMS)


@pytest.fixture
def procs(ipc_dir: Path) -> Iterator[Procs]:
    with tmpfs_procs(ipc_dir, symbols=("EUR-USD",), timeframes=("5m",)) as p:
        text = p.config.read_text().replace(
            "[gateway]\n", f'[gateway]\nfeatures_upstream = "ipc://{p.root}/feat"\n'
        )
        p.config.write_text(
            text + "[features_stage.endpoints]\n"
            f'feed = "ipc://{p.root}/feat"\nupstream = "{p.upstream}"\nmetrics_port = 0\n'
            + SET_TOML
        )
        yield p


def start_features(p: Procs) -> None:
    p._start("features", [PYTHON, "-m", "barstream.services.features", "--config", str(p.config)])


def features_records(p: Procs, key: str) -> np.ndarray:
    path = p.data_root / "data" / "features" / "EUR-USD" / "BID" / f"{key.split('/')[2]}.bars"
    with Store.open(path, writable=False) as store:
        return store.snapshot()


class Joined:
    """A closed-only consumer's joined series: checks no gap, no duplicate on the way."""

    def __init__(self) -> None:
        self.rows: np.ndarray | None = None
        self.base = 0
        self.items: list[FeatureBarUpdate] = []

    @property
    def end(self) -> int:
        return self.base + (0 if self.rows is None else len(self.rows))

    def apply(self, item: FeatureBarUpdate) -> None:
        assert isinstance(item, FeatureBarUpdate)
        self.items.append(item)
        assert not (item.records["flags"] & FLAG_PROVISIONAL).any(), (
            "closed-only got a provisional bar"
        )
        if self.rows is None:
            assert item.kind == "history"
            self.base, self.rows = item.start_offset, item.records.copy()
            return
        assert item.start_offset <= self.end, (
            f"gap: item at bar {item.start_offset}, end {self.end}"
        )
        assert item.replaces == max(0, self.end - item.start_offset), item
        assert item.replaces or len(item.records), f"empty item {item}"
        self.rows = np.concatenate([self.rows[: item.start_offset - self.base], item.records])


def expected_rows(p: Procs) -> np.ndarray:
    fs = the_set()
    bars = p.source_records(TOPIC)
    closed = bars[(bars["flags"] & FLAG_PROVISIONAL) == 0]
    return joined(fs, layout.store_records(fs, closed, compute(fs, closed)))  # type: ignore[arg-type]


def consume(p: Procs, c: GatewayClient, rows: Joined, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for item in c.stream(
        "EUR-USD", "1m", history=10_000, closed_only=True, timeout_s=20, features="mix"
    ):
        rows.apply(item)  # type: ignore[arg-type]
        if p.done_file.exists():
            want = expected_rows(p)
            if rows.end == len(want) and rows.rows is not None:
                got = rows.rows
                if got.tobytes() == want[rows.base :].tobytes():
                    return
        assert time.monotonic() < deadline, (
            f"not caught up: end {rows.end}\n{p.log_tail('features')}"
        )


def test_revision_recomputes_features_and_tells_the_consumer(procs: Procs) -> None:
    depth = 20
    procs.start_source(
        [TOPIC], bars=400, ticks=2, pace_s=0.004, revise_at_bar=300, revise_depth=depth
    )
    start_features(procs)
    procs.start_gateway()
    rows = Joined()
    with GatewayClient(procs.publish, procs.requests, timeout_s=5) as c:
        wait_for(lambda: c.status().published > 20, 30, what="first updates")
        consume(procs, c, rows, timeout_s=120)
    revisions = [i for i in rows.items if i.kind != "history" and i.replaces]
    assert len(revisions) == 1, [(r.start_offset, r.replaces) for r in revisions]
    rev = revisions[0]
    assert rev.start_offset == 300 - depth and rev.replaces == depth
    assert (rev.records["flags"][:depth] & FLAG_REVISED).all()
    # the features of the revised bars changed with them (the source moves their closes)
    before = next(
        i for i in rows.items if i.start_offset <= 300 - depth < i.end_offset and i is not rev
    )
    old = before.records[300 - depth - before.start_offset]
    assert old["close"] != rev.records[0]["close"]
    assert old["sma_10"] != rev.records[0]["sma_10"]


def test_kill9_of_the_features_stage_loses_and_repeats_nothing(procs: Procs) -> None:
    rng = random.Random(20261203)
    procs.start_source([TOPIC], bars=1500, ticks=2, pace_s=0.006)
    start_features(procs)
    procs.start_gateway()
    rows = Joined()
    kills = 0
    import threading

    errors: list[BaseException] = []

    def killer() -> None:
        nonlocal kills
        try:
            while kills < 24 and not procs.done_file.exists():
                time.sleep(rng.uniform(0.1, 0.6))
                procs.kill("features")
                kills += 1
                start_features(procs)
        except BaseException as e:
            errors.append(e)

    with GatewayClient(procs.publish, procs.requests, timeout_s=5) as c:
        wait_for(lambda: c.status().published > 20, 30, what="first updates")
        t = threading.Thread(target=killer, daemon=True)
        t.start()
        consume(procs, c, rows, timeout_s=180)
        t.join(timeout=30)
    assert not errors, errors
    assert kills >= 20, f"only {kills} kills before the source finished"
    # every closed bar once: no item replaced anything (there was no revision)
    assert not [i for i in rows.items if i.kind != "history" and i.replaces]
    fs = the_set()
    bars = procs.source_records(TOPIC)
    want = layout.store_records(fs, bars, compute(fs, bars))
    wait_for(
        lambda: features_records(procs, "EUR-USD/BID/1m.mix").tobytes() == want.tobytes(),
        30,
        what="the features store to equal the batch computation",
    )
