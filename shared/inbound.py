"""What arrives from an upstream feed, checked before a stage stores it.

Names (stream keys) are ``shared/names.py``'s; this module holds the checks of the records:
``bars_problem`` (the invariants every follower's bar store keeps, whatever an upstream —
or a process that took its address — sends) and ``INPUT_ERRORS`` (what a stage computing
on upstream records may raise: the batch is a counted rejection, never an exit, since a
restart would get the same batch again). docs/PROTOCOL.md "Names off the wire".
"""

from __future__ import annotations

from typing import Final

import numpy as np

from barstream.shared.errors import UpstreamInvalid

#: What a stage's ``handle`` may raise on upstream records it cannot compute with: the batch
#: is a counted rejection (``reason="bad-records"``), never an exit.
INPUT_ERRORS: Final = (ValueError, KeyError, IndexError, ArithmeticError, UpstreamInvalid)


def bars_problem(before: np.ndarray, records: np.ndarray, *, ordered: bool = True) -> str | None:
    """Why upstream bar ``records`` cannot follow the bar ``before`` (0 or 1 record: what the
    store holds just before the batch's start) — open times not strictly increasing,
    prices or volume not finite, low above high — or None. A follower's stores keep these
    invariants whatever an upstream (or a process that took its address) sends.
    ``ordered=False``: prices only (the aggregator's day versions may come in any order)."""
    ts = records["ts_ms"] if ordered else records["ts_ms"][:0]
    if len(before) and len(ts) and int(ts[0]) <= int(before["ts_ms"][-1]):
        return f"record 0: ts_ms {int(ts[0])} is not after {int(before['ts_ms'][-1])}"
    if len(ts) > 1:
        bad = np.flatnonzero(ts[1:] <= ts[:-1])
        if len(bad):
            i = int(bad[0]) + 1
            return f"record {i}: ts_ms {int(ts[i])} is not after {int(ts[i - 1])}"
    for name in ("open", "high", "low", "close", "volume"):
        col = records[name]
        bad = np.flatnonzero(~np.isfinite(col))
        if len(bad):
            return f"record {int(bad[0])}: {name} is {float(col[bad[0]])}"
    bad = np.flatnonzero(records["low"] > records["high"])
    if len(bad):
        return f"record {int(bad[0])}: low above high"
    return None
