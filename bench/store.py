"""Store benchmark: append + commit rates, and a zero-copy field scan.

- append+commit, commit per batch: batches of 10k records, ``StoreSet.commit()`` after each
  (fdatasync + checkpoint tmp/fsync/rename/fsync dir every 10k records);
- append+commit, group commit: the same batches, one commit every ``GROUP_COMMIT_S`` and
  one at the end (every record durable when the clock stops);
- field scan: sum/min/max of ``close`` over a committed store opened read-only (mmap, no
  copy of the store; the strided column is reduced in cache-sized chunks).

    python -m bench.store       # table for the repo's disk and /dev/shm
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from barstream.shared.header import StoreMeta
from barstream.shared.record import RECORD_DTYPE
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet

REPO = Path(__file__).resolve().parent.parent
N = 4_000_000
BATCH = 10_000
GROUP_COMMIT_S = 0.05
SCAN_CHUNK = 1 << 15
META = StoreMeta("EUR-USD", "BID", "1m")


def _records(n: int) -> np.ndarray:
    r = np.zeros(n, dtype=RECORD_DTYPE)
    r["ts_ms"] = np.arange(n, dtype=np.int64) * 60_000
    r["close"] = 1.1 + np.random.default_rng(1).random(n) * 0.01
    r["open"] = r["high"] = r["low"] = r["close"]
    r["volume"] = 1.0
    return r


def append_commit(base: Path, records: np.ndarray, *, per_batch: bool) -> float:
    with tempfile.TemporaryDirectory(dir=base, prefix="bs-bench-") as d:
        stores = StoreSet.open(d, "bench")
        store = stores.create(META)
        stores.commit()
        t0 = last = time.perf_counter()
        for i in range(0, len(records), BATCH):
            store.append(records[i : i + BATCH])
            stores.touch(META.key)
            now = time.perf_counter()
            if per_batch or now - last >= GROUP_COMMIT_S:
                stores.commit()
                last = now
        stores.commit()
        elapsed = time.perf_counter() - t0
        stores.close()
    return len(records) / elapsed


def scan_close(store: Store) -> tuple[float, float, float]:
    """sum, min, max of ``close`` without copying the store: the strided column is
    gathered chunk by chunk into a cache-sized buffer and reduced there."""
    column = store.records["close"]
    buf = np.empty(SCAN_CHUNK, dtype=np.float64)
    total, lo, hi = 0.0, np.inf, -np.inf
    for i in range(0, len(column), SCAN_CHUNK):
        part = column[i : i + SCAN_CHUNK]
        b = buf[: len(part)]
        np.copyto(b, part)
        total += float(np.add.reduce(b))
        lo = min(lo, float(b.min()))
        hi = max(hi, float(b.max()))
    return total, lo, hi


def field_scan(base: Path, records: np.ndarray) -> float:
    with tempfile.TemporaryDirectory(dir=base, prefix="bs-bench-") as d:
        stores = StoreSet.open(d, "bench")
        stores.create(META).append(records)
        stores.commit()
        reader = Store.open(stores.path_for(META.key), writable=False)
        scan_close(reader)  # map the pages once: we measure the scan, not page faults
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            total, lo, hi = scan_close(reader)
            best = max(best, len(records) / (time.perf_counter() - t0))
        column = records["close"]
        assert (lo, hi) == (column.min(), column.max())
        assert abs(total - float(column.sum())) < 1e-6 * abs(total)
        reader.close()
        stores.close()
    return best


def places() -> list[tuple[str, Path]]:
    out = [("disk", REPO / "var")]
    if Path("/dev/shm").is_dir():
        out.append(("shm", Path("/dev/shm")))
    return out


def run() -> list[tuple[str, float, str]]:
    records = _records(N)
    rows: list[tuple[str, float, str]] = []
    for label, base in places():
        base.mkdir(parents=True, exist_ok=True)
        rows.append(
            (
                f"store append+commit, 10k batches, commit per batch ({label})",
                append_commit(base, records, per_batch=True),
                "records/s",
            )
        )
        rows.append(
            (
                f"store append+commit, 10k batches, group commit ({label})",
                append_commit(base, records, per_batch=False),
                "records/s",
            )
        )
        rows.append(
            (
                f"store field scan close sum/min/max ({label})",
                field_scan(base, records),
                "records/s",
            )
        )
    return rows


if __name__ == "__main__":
    from bench import print_table

    print_table(run())
