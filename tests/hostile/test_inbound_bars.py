"""shared/inbound.py ``bars_problem``: what a follower's stores never take from the wire."""

from __future__ import annotations

import numpy as np

from barstream.shared.inbound import bars_problem
from tests.hostile.support import bars


def test_good_bars_and_the_record_before() -> None:
    b = bars(5)
    assert bars_problem(b[:0], b) is None
    assert bars_problem(b[1:2], b[2:]) is None  # follows the record before
    assert bars_problem(b[:0], b[:0]) is None  # an empty batch (a truncation)


def test_each_broken_invariant_is_named() -> None:
    b = bars(5)
    assert "record 0: ts_ms" in str(bars_problem(b[3:4], b[2:]))  # not after the one before
    back = b.copy()
    back["ts_ms"][3] = back["ts_ms"][1]
    assert str(bars_problem(b[:0], back)).startswith("record 3: ts_ms")
    for name in ("open", "high", "low", "close", "volume"):
        bad = b.copy()
        bad[name][2] = np.nan if name != "volume" else np.inf
        assert str(bars_problem(b[:0], bad)).startswith(f"record 2: {name} is")
    inv = b.copy()
    inv["low"][4] = inv["high"][4] + 1
    assert bars_problem(b[:0], inv) == "record 4: low above high"


def test_unordered_checks_prices_only() -> None:
    b = bars(5)[::-1].copy()
    assert bars_problem(b[:0], b, ordered=False) is None
    b["close"][0] = np.nan
    assert "close" in str(bars_problem(b[:0], b, ordered=False))
