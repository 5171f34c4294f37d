"""A store's committed records, batch by batch, read in place by a process that is not its
writer: where the pipeline keeps a store (``locate``) and a consistent, bounded scan of it
(``CommittedScan``). ``barstream.frames`` turns the batches into Arrow, Polars and pandas,
``barstream sql`` hands them to DuckDB.

Where: ``data_dir/<service>/SYMBOL/SIDE/TIMEFRAME.bars`` (docs/FORMAT.md §1), the service
being the gateway (its replicas: every served topic, 1m included), the resampler (every
timeframe and its copy of the 1m series) or the aggregator (1m only).

The scan's contract:

- **committed records only**: it reads the length the header publishes (FORMAT.md §6),
  never the file size — records the writer appended but has not committed are not seen;
- **bounded memory**: each batch is a copy of at most ``batch_rows`` records' fields,
  gathered column by column from the mmap view in cache-sized pieces (a 64-byte record is
  strided; Arrow and numpy reductions want contiguous columns); the batch's mapped pages
  are released after it is read (``StoreReader.release``), so neither the heap nor the
  mapping grows with the store;
- **one committed state**: every batch is checked against the seqlock after it is copied.
  When the writer rewrote committed records meanwhile (a provisional bar updated, a
  revision), the scan finds the lowest offset that may have changed — the length the header
  shows while ``seq`` is odd, and the rewind log of the writer's checkpoint
  (FORMAT.md §7) for rewrites already committed — and: a change at or past the end of what
  it handed out is taken in (it waits, bounded, for that commit and goes on in the new
  state, of which everything handed out is a prefix); a change below it raises
  ``StoreRewritten``. A writer that dies mid-rewrite and is restarted before the scan looks
  again is seen as a change from offset 0 (its restore is not told apart from a rewrite).
- ``start_ms``/``end_ms`` bound the scan by binary search on ``ts_ms`` before any batch
  (records of a bar store are in time order).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from barstream import configs
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.config import Config
from barstream.shared.errors import (
    CheckpointCorrupt,
    StoreError,
    StoreMissing,
    StoreRewritten,
    UnknownStore,
)
from barstream.shared.header import StoreMeta
from barstream.shared.reader import Published
from barstream.shared.store import Store

#: Services whose stores hold time-ordered bars, and the timeframes beyond 1m each keeps.
BAR_SERVICES: Final = ("gateway", "resampler", "aggregator")
#: The record fields a scan can gather (``RECORD_DTYPE`` names).
FIELDS: Final = ("ts_ms", "open", "high", "low", "close", "volume", "flags")
BATCH_ROWS: Final = 65_536
#: Records gathered per field at a time: 8192 x 64 B = 512 KiB of records stay in cache
#: while each field is copied out of them (about 3x faster than whole 64 k batches).
GATHER_ROWS: Final = 8192
#: How long a scan waits for the writer to commit a rewrite it ran into.
WAIT_COMMIT_S: Final = 5.0
_NEVER: Final = 1 << 62

#: Allocates the array a batch's field is gathered into (``np.empty`` by default).
Alloc = Callable[[int, np.dtype], np.ndarray]


def locate(
    symbol: str,
    side: str,
    timeframe: str,
    *,
    config: Config | str | Path | None = None,
    data_dir: str | Path | None = None,
    store: str = "gateway",
) -> Path:
    """The store file of ``symbol``/``side``/``timeframe`` kept by the service ``store``.

    The data directory is ``data_dir``, else the configuration's ``pipeline.data_dir``
    (``config``: a loaded ``Config`` or a TOML path; default the packaged config/live.toml).
    A name the configuration does not list — or, with ``data_dir``, that the directory does
    not hold — raises ``UnknownStore`` naming those that exist; a listed store without a
    file raises ``StoreMissing`` (the pipeline has not written it yet)."""
    if store not in BAR_SERVICES:
        raise UnknownStore("store", store, f"bars are read from one of {list(BAR_SERVICES)}")
    key = f"{symbol}/{side}/{timeframe}"
    if data_dir is not None:
        root = Path(data_dir) / store
        _check_on_disk(root, symbol, side, timeframe, key)
    else:
        cfg = (
            config
            if isinstance(config, Config)
            else configs.load(Path(config or configs.LIVE_CONFIG))
        )
        root = configs.data_root(cfg) / store
        timeframes = ["1m"] if store == "aggregator" else ["1m", *cfg.resampler.timeframes]
        for name, value, known in (
            ("symbol", symbol, cfg.pipeline.symbols),
            ("side", side, cfg.pipeline.sides),
            ("timeframe", timeframe, timeframes),
        ):
            if value not in known:
                raise UnknownStore(
                    name, value, f"the configuration's {store} has {known}", path=cfg.source
                )
    path = root / symbol / side / f"{timeframe}.bars"
    if not path.is_file():
        raise StoreMissing(str(path), key)
    with Store.open(path, writable=False, expect=StoreMeta(symbol, side, timeframe)):
        pass  # a header that decodes and holds this key
    return path


def _check_on_disk(root: Path, symbol: str, side: str, timeframe: str, key: str) -> None:
    if not root.is_dir():
        raise StoreMissing(str(root), key)
    level = root
    for name, value in (("symbol", symbol), ("side", side), ("timeframe", timeframe)):
        if name == "timeframe":
            # bar stores only: a feature store's TIMEFRAME.SET.bars holds bars and their
            # feature records interleaved (docs/FORMAT.md §11), not bars in time order
            known = sorted(p.stem for p in level.glob("*.bars") if "." not in p.stem)
        else:
            known = sorted(p.name for p in level.iterdir() if p.is_dir())
        if value not in known:
            raise UnknownStore(name, value, f"{level} holds {known}")
        level = level / value


class CommittedScan:
    """Batches of the committed records of the store at ``path`` with start_ms <= ts_ms <
    end_ms: each a dict of contiguous numpy arrays, one per field of ``fields`` (see the
    module docstring for the guarantees). Iterating again scans again, from the store as it
    is then; an abandoned iteration closes the store."""

    def __init__(
        self,
        path: Path,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        fields: Sequence[str] = FIELDS,
        batch_rows: int = BATCH_ROWS,
        alloc: Alloc = np.empty,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows {batch_rows}: must be >= 1")
        unknown = [f for f in fields if f not in FIELDS]
        if unknown:
            raise ValueError(f"unknown record fields {unknown}; fields are {list(FIELDS)}")
        self.path = path
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.fields = tuple(fields)
        self.batch_rows = batch_rows
        self.alloc = alloc

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        with Store.open(self.path, writable=False) as store:
            yield from self._batches(store)

    def _batches(self, store: Store) -> Iterator[dict[str, np.ndarray]]:
        for _ in range(100):  # bounds found while no rewrite moved the seqlock
            state = _adopt(store)
            pos, end = self._bounds(store, state)
            if store.published() == state:
                break
        while pos < end:
            stop = min(pos + self.batch_rows, end)
            cols = gather(store.view(pos, stop), self.fields, self.alloc)
            now = store.published()
            if now.seq != state.seq:
                floor = self._changed_from(store, state, now)
                if floor < pos:
                    raise StoreRewritten(
                        str(self.path),
                        f"the writer rewrote committed records from offset {floor} on while "
                        f"this scan read them; records [{floor}, {pos}) were handed out "
                        "already",
                        offset=floor,
                    )
                state = _await_commit(store)
                end = self._end(store, pos, state.length)
                if floor < stop:
                    continue  # this batch may hold rewritten records: read it again
            yield cols
            store.release(pos, stop)
            pos = stop

    def _bounds(self, store: Store, state: Published) -> tuple[int, int]:
        """[first, end) offsets of the time range in the committed state ``state``."""
        times = store.view(0, state.length)["ts_ms"]
        lo = 0 if self.start_ms is None else _search(times, self.start_ms, 0, state.length)
        return lo, self._end(store, lo, state.length)

    def _end(self, store: Store, lo: int, length: int) -> int:
        if self.end_ms is None:
            return length
        return _search(store.view(0, length)["ts_ms"], self.end_ms, min(lo, length), length)

    def _changed_from(self, store: Store, state: Published, now: Published) -> int:
        """Lowest offset whose records may differ from the committed state ``state``, the
        header now reading ``now`` (module docstring)."""
        floor = _NEVER
        if now.generation != state.generation:
            floor = rewind_floor(self.path, store, state.generation)
        if now.seq & 1:
            floor = min(floor, now.length)  # a rewrite in progress: it starts at or past it
        elif now.generation == state.generation:
            # A rewrite ended without a commit: a restarted writer restored the records
            # (FORMAT.md §5). Where it began is known only if this scan saw it start.
            seen = bool(state.seq & 1) and now.seq == state.seq + 1
            floor = min(floor, state.length if seen else 0)
        return floor


def gather(
    records: np.ndarray, fields: Sequence[str], alloc: Alloc = np.empty
) -> dict[str, np.ndarray]:
    """Contiguous copies of ``fields`` of the (strided) structured ``records``, each in an
    array from ``alloc``. (An allocator that keeps freed memory matters: glibc hands a
    batch's megabytes back to the kernel when they are freed, and every batch then pays
    page faults for fresh zeroed pages — 4x the cost of the copy itself.)"""
    n = len(records)
    out = {f: alloc(n, records.dtype[f]) for f in fields}
    for s in range(0, n, GATHER_ROWS):
        part = records[s : s + GATHER_ROWS]
        for f in fields:
            out[f][s : s + len(part)] = part[f]
    return out


def rewind_floor(path: Path, store: Store, since_generation: int) -> int:
    """Lowest offset the writer rewrote in generations after ``since_generation``, from the
    rewind log of its checkpoint (``<service dir>/checkpoint.json``, FORMAT.md §3, §7);
    0 when the log does not reach back that far or cannot be read (conservative)."""
    try:
        point = Checkpoint(path.parents[2] / "checkpoint.json").load()
    except (CheckpointCorrupt, OSError):
        return 0
    mark = None if point is None else point.stores.get(store.meta.key)
    if mark is None or mark.store_id != store.store_id.hex():
        return 0
    floors = [offset for generation, offset in mark.rewinds if generation > since_generation]
    return min(floors) if floors else 0


def _search(times: np.ndarray, ts_ms: int, lo: int, hi: int) -> int:
    """First offset in [lo, hi) with ts_ms >= the given time. A bisection over the strided
    view (np.searchsorted would first copy the whole column)."""
    return bisect.bisect_left(range(hi), ts_ms, lo=lo, hi=hi, key=lambda i: int(times[i]))


def _adopt(store: Store) -> Published:
    """The header's published state, with the reader's length and mapping set to it."""
    for _ in range(1000):
        before = store.published()
        store.refresh()
        if store.published() == before:
            return before
    raise StoreError(str(store.path), "header kept changing; could not read its length")


def _await_commit(store: Store) -> Published:
    """Wait (at most ``WAIT_COMMIT_S``) until no rewrite is in progress, then adopt that
    state; a writer that stays mid-rewrite (it died) leaves the untouched prefix."""
    deadline = time.monotonic() + WAIT_COMMIT_S
    pause_s = 0.0005
    while store.published().seq & 1 and time.monotonic() < deadline:
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.02)
    return _adopt(store)
