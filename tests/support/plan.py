"""A deterministic write plan: what a writer does in commit number ``c`` of seed ``seed``.

The crash test's child process and the feed test's upstream process both follow it, and
the parent recomputes the expected store content with ``Model`` — so a check after any
kill is "the store equals exactly the content of commit c", never "looks plausible".

Each commit is a few operations: plain appends (random batch sizes), a provisional-style
rewrite of the last few records (``replace_from`` with most records unchanged), now and
then a deeper revision (``write`` from far back) or a pure truncation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE


@dataclass(frozen=True)
class Op:
    kind: str  # "append" | "write" | "replace" | "truncate"
    offset: int
    records: np.ndarray


class Writer(Protocol):
    @property
    def length(self) -> int: ...
    def append(self, records: np.ndarray) -> int: ...
    def write(self, offset: int, records: np.ndarray) -> int: ...
    def replace_from(self, offset: int, records: np.ndarray) -> int: ...
    def truncate(self, offset: int) -> None: ...


def make_records(seed: int, c: int, salt: int, start: int, n: int) -> np.ndarray:
    """``n`` records for offsets [start, start+n): random bytes, ts_ms = offset, src_count = c."""
    rng = np.random.default_rng([seed, c, salt])
    words = rng.integers(0, 1 << 63, size=(n, RECORD_SIZE // 8), dtype=np.uint64)
    recs = words.view(RECORD_DTYPE).reshape(n).copy()
    recs["ts_ms"] = np.arange(start, start + n, dtype=np.int64)
    recs["src_count"] = c
    return recs


def ops_for(
    seed: int, c: int, length: int, existing: np.ndarray, *, max_batch: int = 2000
) -> list[Op]:
    """The operations of commit ``c`` on a store of ``length`` records (``existing`` is its
    content, used for provisional rewrites that keep most records)."""
    rng = random.Random(seed * 1_000_003 + c)
    ops: list[Op] = []
    n = length
    roll = rng.random()
    if n and roll < 0.25:  # provisional: rewrite the last few, most unchanged
        k = min(n, rng.randint(1, 8))
        new = existing[n - k :].copy()
        j = rng.randrange(k)
        new[j:] = make_records(seed, c, 1, n - k + j, k - j)
        extra = make_records(seed, c, 2, n, rng.randint(0, 5))
        ops.append(Op("replace", n - k, np.concatenate([new, extra])))
        n = n - k + len(new) + len(extra)
    elif n and roll < 0.33:  # a deeper revision
        at = rng.randrange(n)
        recs = make_records(seed, c, 3, at, rng.randint(1, max_batch))
        ops.append(Op("write", at, recs))
        n = at + len(recs)
    elif n and roll < 0.36:  # history shrank
        at = rng.randrange(n)
        ops.append(Op("truncate", at, make_records(seed, c, 4, at, 0)))
        n = at
    for salt in range(10, 10 + rng.randint(1, 3)):
        recs = make_records(seed, c, salt, n, rng.randint(1, max_batch))
        ops.append(Op("append", n, recs))
        n += len(recs)
    return ops


def apply(writer: Writer, ops: list[Op]) -> None:
    for op in ops:
        if op.kind == "append":
            assert writer.length == op.offset
            writer.append(op.records)
        elif op.kind == "write":
            writer.write(op.offset, op.records)
        elif op.kind == "replace":
            writer.replace_from(op.offset, op.records)
        else:
            writer.truncate(op.offset)


class Model:
    """The expected content: a plain numpy array the operations are applied to."""

    def __init__(self) -> None:
        self.records = np.zeros(0, dtype=RECORD_DTYPE)

    @property
    def length(self) -> int:
        return len(self.records)

    def append(self, records: np.ndarray) -> int:
        self.records = np.concatenate([self.records, records])
        return self.length

    def write(self, offset: int, records: np.ndarray) -> int:
        self.records = np.concatenate([self.records[:offset], records])
        return self.length

    def replace_from(self, offset: int, records: np.ndarray) -> int:
        return self.write(offset, records)

    def truncate(self, offset: int) -> None:
        self.records = self.records[:offset].copy()

    def step(self, seed: int, c: int, **kw: int) -> None:
        apply(self, ops_for(seed, c, self.length, self.records, **kw))


def contents(seed: int, commits: int, **kw: int) -> list[bytes]:
    """Store content (record bytes) after each commit 0..commits."""
    model = Model()
    out = [b""]
    for c in range(1, commits + 1):
        model.step(seed, c, **kw)
        out.append(model.records.tobytes())
    return out
