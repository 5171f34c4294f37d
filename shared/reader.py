"""The read side of a store file (``StoreReader``), shared by its writer and its readers.

A ``StoreReader`` holds an open store file — fd, header facts (``meta``, ``store_id``,
``dtype``) and an mmap of the records — and reads records ``[start, stop)`` of
``[0, length)``: zero-copy views, ``pread`` copies, a binary search by time. ``Store``
(``shared/store.py``) adds the writer; open either with ``Store.open`` (``writable=False``
for a reader in any process).

A reader never reads the checkpoint: ``refresh()`` picks up the length the writer last
published in the header and ``snapshot()`` copies a consistent prefix under the seqlock
(docs/FORMAT.md §6); ``published()`` reads the header's words without adopting them, and
``release()`` drops a range's mapped pages, for scans that read a store batch by batch
(``barstream.frames``). Contract of every read: a range outside ``[0, length)`` raises
``StoreRangeError`` (file, range, length); a closed store raises ``StoreClosed``; a file
shorter than the records it must hold raises ``StoreCorrupt``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np

from barstream.shared.errors import StoreClosed, StoreCorrupt, StoreError, StoreRangeError
from barstream.shared.header import GENERATION_AT, HEADER_SIZE, I64, LENGTH_AT, SEQ_AT, U64, Header
from barstream.shared.record import DTYPES, RECORD_SIZE


class Published(NamedTuple):
    """The header's published words (docs/FORMAT.md §6). ``seq`` is odd while the writer
    rewrites committed records; ``length`` is then the prefix it does not touch."""

    seq: int
    length: int
    generation: int


class StoreReader:
    """An open store file, read side. Built by ``Store.open`` / ``Store.create``."""

    def __init__(self, path: Path, fd: int, header: Header, *, length: int, writable: bool) -> None:
        self.path = path
        self.meta = header.meta
        self.store_id = header.store_id
        self.created_ms = header.created_ms
        self.dtype = DTYPES[header.meta.kind]
        self.writable = writable
        self._fd = fd
        self._map: mmap.mmap | None = None
        self._capacity = 0  # records the current mapping can hold
        self._length = length
        self.committed_length = length
        self.generation = header.generation
        self._closed = False
        self._remap(length)

    @property
    def length(self) -> int:
        """Records in the store, committed or not (the writer's view)."""
        return self._length

    @property
    def records(self) -> np.ndarray:
        """Zero-copy view of records [0, length)."""
        return self.view(0, self._length)

    def view(self, start: int, stop: int) -> np.ndarray:
        """Zero-copy structured view of records [start, stop). Valid until the store closes;
        a reader's view of records the writer later rewrites changes under it (use
        ``snapshot`` for a consistent copy)."""
        self._check_open()
        if not 0 <= start <= stop <= self._length:
            raise StoreRangeError(str(self.path), start, stop, self._length)
        if stop > self._capacity:
            self._remap(stop)
        assert self._map is not None
        arr = np.frombuffer(
            self._map,
            dtype=self.dtype,
            count=stop - start,
            offset=HEADER_SIZE + start * RECORD_SIZE,
        )
        if not self.writable:
            arr.flags.writeable = False
        return arr

    def read_bytes(self, start: int, stop: int) -> bytes:
        """A copy of records [start, stop) as raw bytes (safe to hand to another thread)."""
        return self.view(start, stop).tobytes()

    def read_into(self, start: int, stop: int) -> bytes:
        """Records [start, stop) read with ``pread`` into a new (immutable) buffer: one copy
        from the page cache, no page faults on the mapping, no zero-fill first (the feed
        server's send path)."""
        self._check_open()
        if not 0 <= start <= stop <= self._length:
            raise StoreRangeError(str(self.path), start, stop, self._length)
        return self._pread(start, stop)

    def search(self, ts_ms: int, side: str = "left") -> int:
        """Offset of the first record with ``ts_ms`` >= (``side='left'``) or > the given time.
        Records of a bar store are in time order, so this is a binary search."""
        times = self.view(0, self._length)["ts_ms"]
        return int(np.searchsorted(times, ts_ms, side=side))  # type: ignore[call-overload]

    def range(self, start_ms: int, end_ms: int) -> np.ndarray:
        """Zero-copy view of records with start_ms <= ts_ms < end_ms."""
        return self.view(self.search(start_ms), self.search(end_ms))

    def refresh(self) -> int:
        """Reader: pick up the length the writer last published. Returns the new length.

        While a writer rewrites committed records the header shows only the prefix it
        does not touch, so this never waits (a writer that died mid-rewrite leaves that
        prefix published until the next writer opens the store)."""
        _, length, generation = self.published()
        available = (os.fstat(self._fd).st_size - HEADER_SIZE) // RECORD_SIZE
        if not 0 <= length <= available:
            raise StoreCorrupt(
                str(self.path),
                f"published length {length} but the file holds {available} whole records",
                offset=max(available, 0),
            )
        if length > self._capacity:
            self._remap(length)
        self._length = self.committed_length = length
        self.generation = generation
        return length

    def published(self) -> Published:
        """The header's (seq, length, generation), read consistently (retried while ``seq``
        moves during the read); unlike ``refresh`` this changes nothing in the reader."""
        self._check_open()
        for _ in range(1000):
            seq = self._seq()
            raw = os.pread(self._fd, SEQ_AT, 0)
            length = int(I64.unpack_from(raw, LENGTH_AT)[0])
            (generation,) = U64.unpack_from(raw, GENERATION_AT)
            if self._seq() == seq:
                return Published(seq, length, int(generation))
        # pragma: no cover - a writer rewinding thousands of times per read
        raise StoreError(str(self.path), "header kept changing; could not read its length")

    def release(self, start: int, stop: int) -> None:
        """Drop this process's mapped pages holding records [start, stop)
        (``MADV_DONTNEED``: the page cache keeps them; a view touching them faults them back
        in, so views stay valid). A scan of a store larger than memory, releasing each batch
        after reading it, stays bounded in resident size."""
        self._check_open()
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        lo = (HEADER_SIZE + start * RECORD_SIZE) // page * page
        hi = min(-(-(HEADER_SIZE + stop * RECORD_SIZE) // page) * page, len(self._map))
        if hi > lo:
            self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def snapshot(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Reader: a consistent copy of published records [start, stop) even while the
        writer rewinds (seqlock: retry when ``seq`` moved during the copy)."""
        for attempt in range(10_000):
            before = self._seq()
            self.refresh()
            end = self._length if stop is None else min(stop, self._length)
            out = self.view(min(start, end), end).copy()
            if self._seq() == before:
                return out
            if attempt > 10:
                time.sleep(0.0005)
        raise StoreError(
            str(self.path), "writer kept rewriting; could not take a consistent snapshot"
        )

    def close(self) -> None:
        """Close the mapping and the file (views still alive keep their mapping); a writer
        first closes its undo file and trims the preallocated space (``Store._release``)."""
        if self._closed:
            return
        self._closed = True
        if self._map is not None:
            # Views still alive keep the mapping (BufferError); it goes with them.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self._release()
        os.close(self._fd)

    def __repr__(self) -> str:
        return (
            f"<Store {self.meta.key} len={self._length} committed={self.committed_length} "
            f"gen={self.generation} {self.path}>"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------

    def _release(self) -> None:
        """What a writer does on close between unmapping and closing its fd (``Store``)."""

    def _grow(self, size: int, need: int) -> int:
        """Make the file at least ``need`` bytes; returns its new size. A reader cannot."""
        have = (size - HEADER_SIZE) // RECORD_SIZE
        raise StoreCorrupt(
            str(self.path),
            f"file holds {have} records, {(need - HEADER_SIZE) // RECORD_SIZE} needed",
            offset=max(have, 0),
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(str(self.path), "store is closed")

    def _pread(self, start: int, stop: int) -> bytes:
        size = (stop - start) * RECORD_SIZE
        pos = HEADER_SIZE + start * RECORD_SIZE
        data = os.pread(self._fd, size, pos)
        if len(data) == size:
            return data
        parts = [data]
        done = len(data)
        while done < size:  # a short read: rare, go on from where it stopped
            more = os.pread(self._fd, size - done, pos + done)
            if not more:
                raise StoreCorrupt(str(self.path), "file ends inside a record", offset=start)
            parts.append(more)
            done += len(more)
        return b"".join(parts)

    def _remap(self, records: int) -> None:
        size = os.fstat(self._fd).st_size
        need = HEADER_SIZE + records * RECORD_SIZE
        if size < need:
            size = self._grow(size, need)
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        # Old mappings stay alive while numpy views reference them; they map the same pages.
        self._map = mmap.mmap(self._fd, size, access=access)
        self._capacity = (size - HEADER_SIZE) // RECORD_SIZE

    def _seq(self) -> int:
        raw = os.pread(self._fd, 8, SEQ_AT)
        return int(U64.unpack(raw)[0])
