"""Stores: append-only, memory-mapped files of 64-byte records (``Store``).

A store file is a 4096-byte header (``shared/header.py``) followed by records::

    [ header 4096 B | record 0 | record 1 | ... | record n-1 | preallocated zeros ... ]

One process writes a store; any number read it (the read side, views, ``refresh`` and
``snapshot``, is ``StoreReader`` in ``shared/reader.py``). The writer appends, rewinds
(truncates at an offset and appends again — provisional bars and revisions) and flushes
(fdatasync). Durability is decided by the service's checkpoint (``StoreSet.commit``), never
by the file size: ``committed()`` is the mark a commit will record, ``mark_committed()``
publishes it to readers. The crash rules — the commit order, the torn tail dropped on
open, the undo file saved before committed records are rewritten (``shared/undo.py``) —
are docs/FORMAT.md §4–5, written there once; a reopened writer therefore reads exactly as
its last commit did. The header's published words and the seqlock are FORMAT.md §6, the
rewind log a feed resumes downstreams by is §7. An offset outside the store raises
``StoreRangeError`` (file, range, store length).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np

from barstream.shared import checkpoint as ckpt
from barstream.shared import undo
from barstream.shared.errors import (
    StoreCorrupt,
    StoreError,
    StoreFileMissing,
    StoreMismatch,
    StoreRangeError,
)
from barstream.shared.fsio import (
    NO_SPACE,
    create_new,
    grow_file,
    make_dirs,
    pwritev_all,
    space_for,
    start_writeback,
)
from barstream.shared.header import (
    GENERATION_AT,
    HEADER_SIZE,
    I64,
    LENGTH_AT,
    SEQ_AT,
    U64,
    Header,
    StoreMeta,
    decode_header,
    encode_header,
)
from barstream.shared.reader import StoreReader
from barstream.shared.record import RECORD_SIZE

log = logging.getLogger("barstream.store")

#: The file grows by doubling, at least this much, at most ``GROW_MAX_BYTES`` at a time.
GROW_MIN_BYTES: Final = 1 << 20
GROW_MAX_BYTES: Final = 256 << 20
#: Rewind log entries kept per store; older entries are merged (conservatively).
REWIND_LOG_MAX: Final = 256


class Store(StoreReader):
    """One mmap'd store file: reads (``StoreReader``) and, opened writable, its one writer.
    Use ``Store.create`` / ``Store.open``, or a ``StoreSet``."""

    def __init__(
        self,
        path: Path,
        fd: int,
        header: Header,
        *,
        length: int,
        writable: bool,
        rewinds: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__(path, fd, header, length=length, writable=writable)
        self.rewinds: list[tuple[int, int]] = list(rewinds or [])
        self._low_water = length  # lowest offset rewritten since the last commit
        self._dirty = False  # written since the last flush
        self._published = length  # the length the header shows readers
        self._undo_fd = -1  # open undo file while committed records are being rewritten
        self._undo_low = length  # committed records [_undo_low, committed_length) are saved
        self._mark: ckpt.StoreMark | None = None  # the last committed mark (reused while clean)

    @property
    def undo_path(self) -> Path:
        return undo.undo_path(self.path)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: StoreMeta, *, store_id: bytes | None = None) -> Store:
        """Create an empty store (replacing nothing: an existing file is an error)."""
        path = Path(path)
        make_dirs(path.parent)  # durable: a checkpoint may name this store next
        sid = store_id or secrets.token_bytes(16)
        header = encode_header(meta, sid, int(time.time() * 1000), str(path))
        create_new(path, header)  # never clobbers a store
        return cls.open(path, committed_length=0)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        committed_length: int | None = None,
        generation: int | None = None,
        rewinds: list[tuple[int, int]] | None = None,
        writable: bool = True,
        expect: StoreMeta | None = None,
    ) -> Store:
        """Open a store. A writer passes the committed length and generation from its
        checkpoint and gets the store exactly as that commit left it (the undo file
        replayed, the torn tail dropped: docs/FORMAT.md §5). Readers use the length the
        header publishes."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise StoreFileMissing(str(path), "no such store file") from None
        try:
            raw = os.pread(fd, HEADER_SIZE, 0)
            header = decode_header(raw, str(path))
            if expect is not None and (expect.key, expect.kind) != (
                header.meta.key,
                header.meta.kind,
            ):
                raise StoreMismatch(
                    str(path),
                    f"holds {header.meta.key} (kind {header.meta.kind}), expected {expect.key}",
                )
            size = os.fstat(fd).st_size
            available = (size - HEADER_SIZE) // RECORD_SIZE
            length = header.length if committed_length is None else committed_length
            if length < 0:
                raise StoreCorrupt(str(path), f"negative committed length {length}")
            if length > available:
                raise StoreCorrupt(
                    str(path),
                    f"committed length {length} but the file holds only {available} whole records",
                    offset=available,
                )
            if generation is not None:
                header.generation = generation
            if writable:
                undo.restore(path, fd, header.store_id, header.generation, length)
                used = HEADER_SIZE + length * RECORD_SIZE
                if size > used:
                    tail = os.pread(fd, min(size - used, 1 << 20), used)
                    if tail.strip(b"\x00"):
                        log.warning(
                            "store %s: dropped torn tail past committed length %d (%d bytes)",
                            path,
                            length,
                            size - used,
                        )
                    os.ftruncate(fd, used)
            store = cls(path, fd, header, length=length, writable=writable, rewinds=rewinds)
        except BaseException:
            os.close(fd)
            raise
        if writable:
            store._published = -1
            store._publish()  # also ends a seqlock a crashed writer left odd
        return store

    # -- writing ------------------------------------------------------------------------

    @property
    def stable_length(self) -> int:
        """Committed records not rewritten since the last commit: safe to publish."""
        return min(self.committed_length, self._low_water, self._length)

    def append(self, records: np.ndarray) -> int:
        """Append records (not yet durable: see ``StoreSet.commit``). Returns the new length."""
        return self.append_parts([records])

    def append_parts(self, parts: Sequence[np.ndarray]) -> int:
        """Append several record arrays with one vectored write (``pwritev``): the same
        bytes as appending their concatenation, without building it. Returns the new
        length."""
        self._check_writable()
        parts = [p for p in parts if len(p)]
        n = sum(len(p) for p in parts)
        if n == 0:
            return self._length
        for part in parts:
            if part.dtype != self.dtype:
                raise StoreError(
                    str(self.path), f"append of dtype {part.dtype}, store holds {self.dtype}"
                )
        start = self._length
        end = start + n
        if start < self._undo_low:
            self._save_undo(start)
        if end > self._capacity:
            self._remap(end)
        # pwrite(v), not a copy into the mapping: writing fresh mapped pages faults page by
        # page (5-7x slower on tmpfs); the mapping sees the same page cache.
        views = [np.ascontiguousarray(p).view(np.uint8).data for p in parts]
        with space_for(self.path, n * RECORD_SIZE, f"appending {n} records at {start}"):
            pwritev_all(self._fd, views, HEADER_SIZE + start * RECORD_SIZE)
        start_writeback(self._fd, HEADER_SIZE + start * RECORD_SIZE, n * RECORD_SIZE)
        self._dirty = True
        self._length = end
        return end

    def write(self, offset: int, records: np.ndarray) -> int:
        """ "From ``offset`` on, the store now reads ``records``": truncate + append."""
        return self.write_parts(offset, [records])

    def write_parts(self, offset: int, parts: Sequence[np.ndarray]) -> int:
        """``write(offset, concatenation of parts)`` without the concatenation."""
        if offset < self._length:
            self.truncate(offset)
        elif offset > self._length:
            raise StoreRangeError(
                str(self.path),
                offset,
                offset + sum(len(p) for p in parts),
                self._length,
                f"write at {offset} would leave a hole after length {self._length}",
                offset=offset,
            )
        return self.append_parts(parts)

    def truncate(self, offset: int) -> None:
        """Rewind: drop records [offset, length). Below the committed length this starts a
        new generation at the next commit, and readers are told via the seqlock."""
        self._check_writable()
        if not 0 <= offset <= self._length:
            raise StoreRangeError(
                str(self.path),
                offset,
                self._length,
                self._length,
                f"truncate at {offset} outside [0, {self._length}]",
            )
        if offset < self._published:
            # Readers must stop at `offset` before any byte at or past it changes.
            m = self._header_map()
            I64.pack_into(m, LENGTH_AT, offset)
            (seq,) = U64.unpack_from(m, SEQ_AT)
            U64.pack_into(m, SEQ_AT, seq + (2 if seq & 1 else 1))
            self._published = offset
        if offset < self._low_water:
            self._low_water = offset
        self._length = offset

    def replace_from(self, offset: int, records: np.ndarray) -> int:
        """ "From ``offset`` on, the store now reads ``records``", rewriting only from the
        first record that differs (byte-wise) and truncating when ``records`` is shorter
        than what the store holds. Returns the first changed offset; with nothing changed
        that is ``offset + len(records)`` == ``length``. Avoids no-op rewinds downstream."""
        self._check_writable()
        if not 0 <= offset <= self._length:
            raise StoreRangeError(
                str(self.path),
                offset,
                offset + len(records),
                self._length,
                f"replace at {offset} outside [0, {self._length}]",
                offset=offset,
            )
        if records.dtype != self.dtype:
            raise StoreError(
                str(self.path), f"replace with dtype {records.dtype}, store holds {self.dtype}"
            )
        n = len(records)
        k = min(n, self._length - offset)
        same = k
        if k:
            old = self.view(offset, offset + k).view(np.uint64).reshape(k, RECORD_SIZE // 8)
            new = np.ascontiguousarray(records[:k]).view(np.uint64).reshape(k, RECORD_SIZE // 8)
            differ = np.flatnonzero((old != new).any(axis=1))
            same = int(differ[0]) if len(differ) else k
        first = offset + same
        if same == n:
            if self._length > first:
                self.truncate(first)
            return first
        self.write(first, records[same:])
        return first

    def flush(self) -> None:
        """Make written records durable on disk (fdatasync). Step 1 of a commit."""
        self._check_writable()
        if self._dirty:
            with space_for(self.path, 0, "flushing written records (fdatasync)"):
                os.fdatasync(self._fd)
            if os.fstat(self._fd).st_nlink == 0:
                # Deleted while open: these records would go to a file no restart can open.
                raise StoreFileMissing(
                    str(self.path),
                    "the store file was deleted while the service had it open: records from "
                    "here on cannot be committed",
                    offset=self.committed_length,
                )
        self._dirty = False

    def committed(self, rewinds_max: int = REWIND_LOG_MAX) -> ckpt.StoreMark:
        """The mark this store will have once the pending commit lands (pure; no side effect).
        A store untouched since its last commit returns that commit's mark (the same object)."""
        if (
            self._mark is not None
            and self._length == self.committed_length
            and self._low_water >= self.committed_length
            and rewinds_max == REWIND_LOG_MAX
        ):
            return self._mark
        generation = self.generation
        rewinds = list(self.rewinds)
        if self._low_water < self.committed_length:
            generation += 1
            rewinds.append((generation, self._low_water))
            while len(rewinds) > rewinds_max:
                (_, o1), (g2, o2) = rewinds[0], rewinds[1]
                rewinds[0:2] = [(g2, min(o1, o2))]
        return ckpt.StoreMark(
            store_id=self.store_id.hex(),
            length=self._length,
            generation=generation,
            rewinds=rewinds,
        )

    def mark_committed(self, mark: ckpt.StoreMark) -> None:
        """Step 3 of a commit (after the checkpoint is durable): publish length/generation."""
        if mark is self._mark and self._published == mark.length and self._undo_fd < 0:
            return  # untouched since that mark was committed: nothing to publish
        self.committed_length = mark.length
        self.generation = mark.generation
        self.rewinds = [(g, o) for g, o in mark.rewinds]
        self._low_water = self._length
        self._undo_low = self._length
        if self._undo_fd >= 0:
            undo.discard(self._undo_fd, self.path)
            self._undo_fd = -1
        if self.writable:
            self._publish()
        self._mark = mark

    def rewind_floor(self, since_generation: int) -> int | None:
        """Lowest offset rewritten in generations after ``since_generation`` (None: none).
        Conservative when the log was compacted."""
        floors = [o for g, o in self.rewinds if g > since_generation]
        if since_generation < self.generation and not floors:
            return 0  # history older than the log: resend everything
        return min(floors) if floors else None

    # -- helpers ------------------------------------------------------------------------

    def _release(self) -> None:
        # On close the writer keeps an undo file (the next writer restores from it) and
        # trims the preallocated space past the committed length.
        if self._undo_fd >= 0:
            os.close(self._undo_fd)
            self._undo_fd = -1
        if self.writable:
            try:
                os.ftruncate(self._fd, HEADER_SIZE + self.committed_length * RECORD_SIZE)
            except OSError as e:
                log.warning("store %s: could not trim file on close: %s", self.path, e)

    def _check_writable(self) -> None:
        self._check_open()
        if not self.writable:
            raise StoreError(str(self.path), "store was opened read-only")

    def _save_undo(self, start: int) -> None:
        """Save committed records [start, _undo_low) before the first byte of them changes."""
        stop = min(self._undo_low, self.committed_length)
        if start >= stop:
            self._undo_low = min(self._undo_low, start)
            return
        with space_for(
            self.undo_path, (stop - start) * RECORD_SIZE + 64, "saving committed records"
        ):
            self._save_undo_entry(start, stop)
        self._undo_low = start

    def _save_undo_entry(self, start: int, stop: int) -> None:
        self._undo_fd = undo.save(
            self._undo_fd,
            self.path,
            start,
            self._pread(start, stop),
            store_id=self.store_id,
            generation=self.generation,
            length=self.committed_length,
        )

    def _grow(self, size: int, need: int) -> int:
        if not self.writable:
            return super()._grow(size, need)
        # Grow by doubling (bounded) so remaps stay rare.
        cur = max(size - HEADER_SIZE, 0)
        grow = max(GROW_MIN_BYTES, min(cur, GROW_MAX_BYTES))
        new_size = max(need, HEADER_SIZE + -(-(cur + grow) // RECORD_SIZE) * RECORD_SIZE)
        try:
            grow_file(self._fd, size, new_size)
        except OSError as e:
            if e.errno not in NO_SPACE or new_size == need:
                raise
            # No room to preallocate ahead: take only what this write needs (a full disk
            # is then met by the write that truly needs the space, and says how much).
            with space_for(self.path, need - size, f"growing the file to {need:,} bytes"):
                grow_file(self._fd, size, need)
            return need
        return new_size

    def _header_map(self) -> mmap.mmap:
        assert self._map is not None
        return self._map

    def _publish(self) -> None:
        # Commits only grow the published length (a rewind lowered it already, see
        # truncate), so readers copying the old prefix need no seq change; an odd seq
        # (rewrite in progress) becomes even.
        m = self._header_map()
        I64.pack_into(m, LENGTH_AT, self.committed_length)
        U64.pack_into(m, GENERATION_AT, self.generation)
        (seq,) = U64.unpack_from(m, SEQ_AT)
        if seq & 1:
            U64.pack_into(m, SEQ_AT, seq + 1)
        self._published = self.committed_length
        # The header is advisory for readers (the checkpoint is the truth): no sync here.
