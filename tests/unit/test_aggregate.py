"""barstream.services.aggregator.aggregate.merge: the canonical 1m series from a log of day versions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from barstream.services.aggregator.aggregate import merge
from barstream.shared.errors import UpstreamInvalid
from barstream.shared.record import (
    FLAG_DAY_END,
    FLAG_LIVE,
    FLAG_PROVISIONAL,
    FLAG_REVISED,
    RECORD_DTYPE,
)
from barstream.shared.timeframe import DAY_MS, MINUTE_MS
from tests.support.memstore import MemoryStore
from tests.support.minutes import records_at, utc_ms

DAY0 = utc_ms(2019, 2, 4)


def version(
    rng: np.random.Generator,
    day: int,
    minutes: np.ndarray,
    journal_offset: int,
    *,
    live: bool = False,
) -> np.ndarray:
    """A transformer day version: records of ``minutes`` (minute-of-day indexes) of ``day``."""
    out = records_at(rng, DAY0 + day * DAY_MS + np.sort(minutes).astype(np.int64) * MINUTE_MS)
    out["src_offset"] = journal_offset
    if len(out):
        out["flags"] = FLAG_LIVE if live else 0
        out["flags"][-1] |= FLAG_PROVISIONAL if live else FLAG_DAY_END
    return out


class Log:
    """The transformer store: day versions appended in log order."""

    def __init__(self) -> None:
        self.records = np.zeros(0, RECORD_DTYPE)

    def append(self, v: np.ndarray) -> tuple[int, np.ndarray]:
        base = len(self.records)
        self.records = np.concatenate([self.records, v])
        return base, v


def oracle(log: np.ndarray) -> np.ndarray:
    """The fold over day versions in log order, written plainly (one record at a time)."""
    state: dict[int, list[np.void]] = {}
    cuts = [0] + [i for i in range(1, len(log)) if log["src_offset"][i] != log["src_offset"][i - 1]]
    for lo, hi in zip(cuts, [*cuts[1:], len(log)], strict=True):
        day = int(log["ts_ms"][lo]) // DAY_MS
        old = state.get(day, [])
        price = ("ts_ms", "open", "high", "low", "close", "volume")
        new_prices = {tuple(log[i][f] for f in price) for i in range(lo, hi)}
        revised = bool(old) and (
            any(int(o["flags"]) & FLAG_REVISED for o in old)
            or any(
                not int(o["flags"]) & FLAG_PROVISIONAL
                and tuple(o[f] for f in price) not in new_prices
                for o in old
            )
        )
        by_ts = {int(o["ts_ms"]): o for o in old}
        new: list[np.void] = []
        for i in range(lo, hi):
            r = log[i : i + 1].copy()[0]
            r["src_offset"] = i
            r["src_count"] = 1
            r["flags"] &= 0xFFFF ^ FLAG_LIVE  # provenance is not part of the canonical minute
            if revised:
                r["flags"] |= FLAG_REVISED
            o = by_ts.get(int(r["ts_ms"]))
            if o is not None:
                a, b = r.copy(), o.copy()
                a["src_offset"] = b["src_offset"] = 0
                if a.tobytes() == b.tobytes():
                    r["src_offset"] = o["src_offset"]
            new.append(r)
        state[day] = new
    rows = [r for day in sorted(state) for r in state[day]]
    return np.array(rows, dtype=RECORD_DTYPE) if rows else np.zeros(0, RECORD_DTYPE)


def apply(store: MemoryStore, base: int, incoming: np.ndarray) -> tuple[int, np.ndarray]:
    before = store.records.copy()
    x, new = merge(store.records, incoming, base)
    store.replace_from(x, new)
    after = store.records
    # X is the first record that differs
    assert before[:x].tobytes() == after[:x].tobytes()
    if x < min(len(before), len(after)):
        assert before[x].tobytes() != after[x].tobytes(), f"offset {x} did not change"
    else:
        assert x == min(len(before), len(after)) or len(new) == 0
    return x, new


# -- common cases ------------------------------------------------------------------------------


def test_append_a_new_day() -> None:
    rng = np.random.default_rng(1)
    log, store = Log(), MemoryStore()
    apply(store, *log.append(version(rng, 0, np.arange(1440), 0)))
    x, new = apply(store, *log.append(version(rng, 1, np.arange(0, 1440, 2), 1)))
    assert (x, len(new)) == (1440, 720)
    assert new["src_offset"].tolist() == list(range(1440, 2160))
    assert np.all(new["src_count"] == 1) and not np.any(new["flags"] & FLAG_REVISED)


def test_live_repoll_rewrites_only_the_changed_minute() -> None:
    rng = np.random.default_rng(2)
    log, store = Log(), MemoryStore()
    apply(store, *log.append(version(rng, 0, np.arange(1440), 0)))
    live = version(rng, 1, np.arange(600), 1, live=True)
    apply(store, *log.append(live))
    again = live.copy()
    again["src_offset"] = 2
    again["close"][-1] += 1
    again["high"][-1] = max(again["high"][-1], again["close"][-1])
    x, new = apply(store, *log.append(again))
    assert (x, len(new)) == (1440 + 599, 1)
    assert int(new["src_offset"][0]) == len(log.records) - 1  # the newest transformer record
    assert int(store.records["src_offset"][1440]) == 1440  # unchanged minutes keep their source
    # the live day grows: the old last minute turns final, two minutes are added
    grown = version(rng, 1, np.arange(602), 3, live=True)
    grown[:600] = again
    grown["src_offset"] = 3
    grown["flags"][:] = FLAG_LIVE
    grown["flags"][-1] |= FLAG_PROVISIONAL
    x, new = apply(store, *log.append(grown))
    assert (x, len(new)) == (1440 + 599, 3)
    assert not np.any(store.records["flags"] & FLAG_REVISED)  # growth is not a revision


def test_revision_in_the_middle_of_history() -> None:
    rng = np.random.default_rng(3)
    log, store = Log(), MemoryStore()
    days = [version(rng, d, np.arange(0, 1440, 3), d) for d in range(5)]
    for v in days:
        apply(store, *log.append(v))
    rev = days[2].copy()
    rev["src_offset"] = 5
    rev["close"][100] = rev["low"][100]
    rev = np.delete(rev, [200, 201])  # two minutes vanish
    x, _ = apply(store, *log.append(rev))
    assert x == 2 * 480  # the whole day is flagged revised: its first minute changed (flags)
    assert len(store.records) == 5 * 480 - 2
    day2 = store.records[960 : 960 + 478]
    assert np.all(day2["flags"] & FLAG_REVISED)
    assert not np.any(store.records[:960]["flags"] & FLAG_REVISED)
    assert not np.any(store.records[960 + 478 :]["flags"] & FLAG_REVISED)
    assert store.records.tobytes() == oracle(log.records).tobytes()


def test_identical_refetch_changes_nothing() -> None:
    rng = np.random.default_rng(4)
    log, store = Log(), MemoryStore()
    v = version(rng, 0, np.arange(1440), 0)
    apply(store, *log.append(v))
    same = v.copy()
    same["src_offset"] = 1
    x, new = apply(store, *log.append(same))
    assert (x, len(new)) == (1440, 0)


def test_version_spanning_two_days_is_rejected() -> None:
    rng = np.random.default_rng(5)
    bad = records_at(rng, np.array([DAY0 + DAY_MS - MINUTE_MS, DAY0 + DAY_MS]))
    bad["src_offset"] = 7
    with pytest.raises(UpstreamInvalid, match="transformer offset 40: day version 7 spans"):
        merge(np.zeros(0, RECORD_DTYPE), bad, 40)


# -- random logs ---------------------------------------------------------------------------------


def random_log(rng: np.random.Generator, n_versions: int) -> list[np.ndarray]:
    latest: dict[int, np.ndarray] = {}
    out: list[np.ndarray] = []
    for j in range(n_versions):
        day = int(rng.integers(0, 8))
        prev = latest.get(day)
        kind = rng.random()
        if prev is None or kind < 0.3:  # a fresh version (a revision when one existed)
            v = version(rng, day, rng.choice(1440, int(rng.integers(1, 200)), replace=False), j,
                        live=bool(rng.random() < 0.3))  # fmt: skip
        elif kind < 0.6:  # a few minutes change or vanish
            v = prev.copy()
            v["close"][rng.random(len(v)) < 0.1] += 1
            v["high"] = np.maximum(v["high"], v["close"])
            v = v[rng.random(len(v)) < 0.95] if len(v) > 1 else v
        elif kind < 0.85:  # the live tail grows or its last minute moves
            last = int((prev["ts_ms"][-1] - DAY0) // MINUTE_MS % 1440)
            more = np.arange(last + 1, min(1440, last + 1 + int(rng.integers(0, 5))))
            grown = version(rng, day, more, j, live=True)
            v = np.concatenate([prev, grown])
            v["flags"] = FLAG_LIVE
            v["flags"][-1] |= FLAG_PROVISIONAL
            if rng.random() < 0.5:
                v["close"][-1] = v["low"][-1]
        else:  # an identical re-fetch
            v = prev.copy()
        v = v.copy()
        v["src_offset"] = j
        latest[day] = v
        out.append(v)
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_versions=st.integers(1, 40), n_batches=st.integers(1, 6))
@example(seed=10474, n_versions=18, n_batches=1)  # holds an empty version
def test_random_versions_equal_latest_version_per_day(
    seed: int, n_versions: int, n_batches: int
) -> None:
    rng = np.random.default_rng(seed)
    versions = random_log(rng, n_versions)
    log = np.concatenate(versions)
    store = MemoryStore()
    edges = np.cumsum([0] + [len(v) for v in versions]).tolist()  # batches end at version edges
    cuts = sorted({0, len(log), *rng.choice(edges, n_batches - 1).tolist()})
    for lo, hi in itertools.pairwise(cuts):
        apply(store, lo, log[lo:hi])
    got = store.records
    assert got.tobytes() == oracle(log).tobytes(), f"seed={seed}"
    # and the plain definition: per day, the latest version's minutes and prices
    latest: dict[int, np.ndarray] = {}
    for v in versions:
        if len(v):  # an empty version leaves no record in the log: nothing to see
            latest[int(v["ts_ms"][0]) // DAY_MS] = v
    want = np.concatenate([latest[d] for d in sorted(latest)])
    for f in ("ts_ms", "open", "high", "low", "close", "volume"):
        assert np.array_equal(got[f], want[f]), (seed, f)
    assert np.all(got["src_count"] == 1)
    assert np.all((got["flags"] & (0xFFFF ^ FLAG_REVISED)) == want["flags"] & (0xFFFF ^ FLAG_LIVE))
    src = got["src_offset"]
    assert np.all(log["ts_ms"][src] == got["ts_ms"])  # each points at a record of that minute
