"""Stores: append-only, memory-mapped files of 64-byte records.

A store file is a 4096-byte header followed by records (see docs/FORMAT.md)::

    [ header 4096 B | record 0 | record 1 | ... | record n-1 | preallocated zeros ... ]

One process writes a store; any number read it. The writer appends, rewinds (truncates at
an offset and appends again — provisional bars and revisions) and flushes; durability is
decided by the service's checkpoint (``StoreSet.commit``), never by the file size: on open,
anything past the committed length is a torn tail and is dropped.

How readers learn the committed length: after every commit the writer stores the new
length and generation in the header (two aligned 8-byte words inside a seqlock: ``seq`` is
odd while the writer rewrites records readers may already have seen). ``Store.open(...,
writable=False)`` readers call ``refresh()`` (or ``snapshot()``) to pick up the new length;
a snapshot retries when ``seq`` moved while it copied.

Rewriting committed records in place would let a crash leave a mix of old and new bytes
under the old checkpoint. So before the writer first overwrites committed records it saves
their old bytes to an *undo file* (``<store>.undo``, fsynced); a commit makes the undo
stale (its generation is now behind the checkpoint's) and removes it; opening a writer
with an undo file of the checkpoint's generation copies the old bytes back. A reopened
store therefore always reads exactly as its last commit did.

A store keeps a short *rewind log* (``generation`` + the lowest offset rewritten in each
generation), committed with its length: it lets a feed tell a downstream that reconnects
with "I have offsets [0, N) of generation G" exactly where its copy became stale.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import numpy as np

from barstream.shared import checkpoint as ckpt
from barstream.shared.errors import StoreClosed, StoreCorrupt, StoreError, StoreMismatch
from barstream.shared.record import DTYPES, KIND_BARS, RECORD_SIZE

log = logging.getLogger("barstream.store")

MAGIC: Final = b"BARSTRM\x00"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 4096
#: The file grows by doubling, at least this much, at most ``GROW_MAX_BYTES`` at a time.
GROW_MIN_BYTES: Final = 1 << 20
GROW_MAX_BYTES: Final = 256 << 20
#: Rewind log entries kept per store; older entries are merged (conservatively).
REWIND_LOG_MAX: Final = 256

# Header layout: fixed part covered by a CRC, then the mutable words.
_FIXED = struct.Struct("<8sIIII8s16s32s8s16s64s")  # magic..alignment (see FORMAT.md)
_FIXED_AT: Final = 0
_CRC_AT: Final = _FIXED.size  # u4 crc32 of the fixed part
_LENGTH_AT: Final = 192  # i8 committed length (records)
_GENERATION_AT: Final = 200  # u8 committed generation
_SEQ_AT: Final = 208  # u8 seqlock counter (odd = writer rewriting)
_U64 = struct.Struct("<Q")
#: Undo file: header (magic, store id, generation, committed length) then entries, each
#: (start, count, crc32 of the bytes) + count x 64 bytes of the records as last committed.
UNDO_MAGIC: Final = b"BSUNDO\x00\x01"
_UNDO_HEAD = struct.Struct("<8s16sQq")
_UNDO_ENTRY = struct.Struct("<qqI4x")
_I64 = struct.Struct("<q")
assert _CRC_AT + 4 <= _LENGTH_AT


@dataclass(frozen=True)
class StoreMeta:
    """What a store holds. ``key`` (``symbol/side/timeframe``) names it in feeds and checkpoints."""

    symbol: str
    side: str
    timeframe: str
    alignment: str = ""
    kind: int = KIND_BARS

    @property
    def key(self) -> str:
        return f"{self.symbol}/{self.side}/{self.timeframe}"

    @classmethod
    def from_key(cls, key: str, *, alignment: str = "", kind: int = KIND_BARS) -> StoreMeta:
        parts = key.split("/")
        if len(parts) != 3 or not all(parts):
            raise ValueError(f"store key {key!r} is not symbol/side/timeframe")
        return cls(parts[0], parts[1], parts[2], alignment, kind)


@dataclass
class Header:
    meta: StoreMeta
    store_id: bytes
    created_ms: int
    length: int
    generation: int
    seq: int


def _pack_str(value: str, size: int, what: str, path: str) -> bytes:
    raw = value.encode()
    if len(raw) > size:
        raise StoreError(path, f"{what} {value!r} is longer than {size} bytes")
    return raw


def _unpack_str(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode()


def encode_header(meta: StoreMeta, store_id: bytes, created_ms: int, path: str = "") -> bytes:
    fixed = _FIXED.pack(
        MAGIC,
        FORMAT_VERSION,
        HEADER_SIZE,
        RECORD_SIZE,
        meta.kind,
        struct.pack("<q", created_ms),
        store_id,
        _pack_str(meta.symbol, 32, "symbol", path),
        _pack_str(meta.side, 8, "side", path),
        _pack_str(meta.timeframe, 16, "timeframe", path),
        _pack_str(meta.alignment, 64, "alignment", path),
    )
    buf = bytearray(HEADER_SIZE)
    buf[: _FIXED.size] = fixed
    struct.pack_into("<I", buf, _CRC_AT, zlib.crc32(fixed))
    return bytes(buf)


def decode_header(buf: bytes | memoryview | mmap.mmap, path: str) -> Header:
    if len(buf) < HEADER_SIZE:
        raise StoreCorrupt(
            path, f"file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    fixed = bytes(buf[: _FIXED.size])
    (magic, version, header_size, record_size, kind, created, store_id, sym, side, tf, align) = (
        _FIXED.unpack(fixed)
    )
    if magic != MAGIC:
        raise StoreCorrupt(path, f"bad magic {magic!r}: not a barstream store")
    if version != FORMAT_VERSION:
        raise StoreCorrupt(path, f"format version {version}, this build reads {FORMAT_VERSION}")
    (crc,) = struct.unpack_from("<I", buf, _CRC_AT)
    if crc != zlib.crc32(fixed):
        raise StoreCorrupt(path, "header checksum mismatch: the header was damaged")
    if header_size != HEADER_SIZE or record_size != RECORD_SIZE:
        raise StoreCorrupt(
            path, f"header size {header_size} / record size {record_size} unsupported"
        )
    if kind not in DTYPES:
        raise StoreCorrupt(path, f"unknown store kind {kind}")
    meta = StoreMeta(_unpack_str(sym), _unpack_str(side), _unpack_str(tf), _unpack_str(align), kind)
    (length,) = _I64.unpack_from(buf, _LENGTH_AT)
    (generation,) = _U64.unpack_from(buf, _GENERATION_AT)
    (seq,) = _U64.unpack_from(buf, _SEQ_AT)
    if length < 0:
        raise StoreCorrupt(path, f"negative committed length {length}")
    (created_ms,) = struct.unpack("<q", created)
    return Header(meta, store_id, created_ms, length, generation, seq)


class Store:
    """One mmap'd store file. Use ``Store.create`` / ``Store.open``, or a ``StoreSet``."""

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
        self.rewinds: list[tuple[int, int]] = list(rewinds or [])
        self._low_water = length  # lowest offset rewritten since the last commit
        self._dirty = False  # written since the last flush
        self._published = length  # the length the header shows readers
        self._undo_fd = -1  # open undo file while committed records are being rewritten
        self._undo_low = length  # committed records [_undo_low, committed_length) are saved
        self._closed = False
        self._mark: ckpt.StoreMark | None = None  # the last committed mark (reused while clean)
        self._remap(length)

    @property
    def undo_path(self) -> Path:
        return self.path.with_name(self.path.name + ".undo")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: StoreMeta, *, store_id: bytes | None = None) -> Store:
        """Create an empty store (replacing nothing: an existing file is an error)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sid = store_id or secrets.token_bytes(16)
        header = encode_header(meta, sid, int(time.time() * 1000), str(path))
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, header)
            os.fsync(fd)
            os.close(fd)
            os.link(tmp, path)  # fails if path exists: never clobber a store
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
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
        """Open a store. A writer passes the committed length from its checkpoint; the
        file's records past it are a torn tail and are dropped (logged), and committed
        records an interrupted rewrite overwrote are restored from the undo file.
        Readers use the length the header publishes."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except FileNotFoundError:
            raise StoreError(str(path), "no such store file") from None
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
                _restore_undo(path, fd, header.store_id, header.generation, length)
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

    # -- reading ------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Records in the store, committed or not (the writer's view)."""
        return self._length

    @property
    def stable_length(self) -> int:
        """Committed records not rewritten since the last commit: safe to publish."""
        return min(self.committed_length, self._low_water, self._length)

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
            raise IndexError(f"{self.path}: records [{start}, {stop}) outside [0, {self._length})")
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
            raise IndexError(f"{self.path}: records [{start}, {stop}) outside [0, {self._length})")
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
        self._check_open()
        for _ in range(1000):
            seq = self._seq()
            raw = os.pread(self._fd, _SEQ_AT, 0)
            length = int(_I64.unpack_from(raw, _LENGTH_AT)[0])
            (generation,) = _U64.unpack_from(raw, _GENERATION_AT)
            if self._seq() == seq:
                break
        else:  # pragma: no cover - a writer rewinding thousands of times per refresh
            raise StoreError(str(self.path), "header kept changing; could not read its length")
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

    # -- writing ------------------------------------------------------------------------

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
        _pwritev_all(self._fd, views, HEADER_SIZE + start * RECORD_SIZE)
        _start_writeback(self._fd, HEADER_SIZE + start * RECORD_SIZE, n * RECORD_SIZE)
        self._dirty = True
        self._length = end
        return end

    def write_parts(self, offset: int, parts: Sequence[np.ndarray]) -> int:
        """``write(offset, concatenation of parts)`` without the concatenation."""
        if offset < self._length:
            self.truncate(offset)
        elif offset > self._length:
            raise StoreError(
                str(self.path),
                f"write at {offset} would leave a hole after length {self._length}",
                offset=offset,
            )
        return self.append_parts(parts)

    def truncate(self, offset: int) -> None:
        """Rewind: drop records [offset, length). Below the committed length this starts a
        new generation at the next commit, and readers are told via the seqlock."""
        self._check_writable()
        if not 0 <= offset <= self._length:
            raise IndexError(f"{self.path}: truncate at {offset} outside [0, {self._length}]")
        if offset < self._published:
            # Readers must stop at `offset` before any byte at or past it changes.
            m = self._header_map()
            _I64.pack_into(m, _LENGTH_AT, offset)
            (seq,) = _U64.unpack_from(m, _SEQ_AT)
            _U64.pack_into(m, _SEQ_AT, seq + (2 if seq & 1 else 1))
            self._published = offset
        if offset < self._low_water:
            self._low_water = offset
        self._length = offset

    def write(self, offset: int, records: np.ndarray) -> int:
        """ "From ``offset`` on, the store now reads ``records``": truncate + append."""
        if offset < self._length:
            self.truncate(offset)
        elif offset > self._length:
            raise StoreError(
                str(self.path),
                f"write at {offset} would leave a hole after length {self._length}",
                offset=offset,
            )
        return self.append(records)

    def replace_from(self, offset: int, records: np.ndarray) -> int:
        """ "From ``offset`` on, the store now reads ``records``", rewriting only from the
        first record that differs (byte-wise) and truncating when ``records`` is shorter
        than what the store holds. Returns the first changed offset; with nothing changed
        that is ``offset + len(records)`` == ``length``. Avoids no-op rewinds downstream."""
        self._check_writable()
        if not 0 <= offset <= self._length:
            raise StoreError(
                str(self.path),
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
            os.fdatasync(self._fd)
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
            # The checkpoint's generation is now past the undo's: it is stale either way,
            # so removing it needs no fsync.
            os.close(self._undo_fd)
            self._undo_fd = -1
            self.undo_path.unlink(missing_ok=True)
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

    def close(self) -> None:
        """Close the mapping; the writer also trims preallocated space past the length."""
        if self._closed:
            return
        self._closed = True
        if self._map is not None:
            # Views still alive keep the mapping (BufferError); it goes with them.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._undo_fd >= 0:
            os.close(self._undo_fd)  # kept: the next writer restores from it
            self._undo_fd = -1
        if self.writable:
            try:
                os.ftruncate(self._fd, HEADER_SIZE + self.committed_length * RECORD_SIZE)
            except OSError as e:
                log.warning("store %s: could not trim file on close: %s", self.path, e)
        os.close(self._fd)

    def __repr__(self) -> str:
        return (
            f"<Store {self.meta.key} len={self._length} committed={self.committed_length} "
            f"gen={self.generation} {self.path}>"
        )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(str(self.path), "store is closed")

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
        data = self._pread(start, stop)
        created = self._undo_fd < 0
        if created:
            fd = os.open(self.undo_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            head = _UNDO_HEAD.pack(
                UNDO_MAGIC, self.store_id, self.generation, self.committed_length
            )
            _pwrite_all(fd, memoryview(head), 0)
            self._undo_fd = fd
        end = os.lseek(self._undo_fd, 0, os.SEEK_END)
        entry = _UNDO_ENTRY.pack(start, stop - start, zlib.crc32(data))
        _pwrite_all(self._undo_fd, memoryview(entry + data), end)
        # Header and entry go to disk with one fsync (and, for a new file, its directory
        # entry) before the caller changes a byte of the saved records: a crash before
        # that leaves the records untouched, whatever the undo file holds.
        os.fsync(self._undo_fd)
        if created:
            _fsync_dir(self.path.parent)
        self._undo_low = start

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
            if not self.writable:
                raise StoreCorrupt(
                    str(self.path),
                    f"file holds {(size - HEADER_SIZE) // RECORD_SIZE} records, {records} needed",
                    offset=max((size - HEADER_SIZE) // RECORD_SIZE, 0),
                )
            # Grow by doubling (bounded) so remaps stay rare.
            cur = max(size - HEADER_SIZE, 0)
            grow = max(GROW_MIN_BYTES, min(cur, GROW_MAX_BYTES))
            new_size = max(need, HEADER_SIZE + -(-(cur + grow) // RECORD_SIZE) * RECORD_SIZE)
            _grow_file(self._fd, size, new_size)
            size = new_size
        access = mmap.ACCESS_WRITE if self.writable else mmap.ACCESS_READ
        # Old mappings stay alive while numpy views reference them; they map the same pages.
        self._map = mmap.mmap(self._fd, size, access=access)
        self._capacity = (size - HEADER_SIZE) // RECORD_SIZE

    def _header_map(self) -> mmap.mmap:
        assert self._map is not None
        return self._map

    def _seq(self) -> int:
        raw = os.pread(self._fd, 8, _SEQ_AT)
        return int(_U64.unpack(raw)[0])

    def _publish(self) -> None:
        # Commits only grow the published length (a rewind lowered it already, see
        # truncate), so readers copying the old prefix need no seq change; an odd seq
        # (rewrite in progress) becomes even.
        m = self._header_map()
        _I64.pack_into(m, _LENGTH_AT, self.committed_length)
        _U64.pack_into(m, _GENERATION_AT, self.generation)
        (seq,) = _U64.unpack_from(m, _SEQ_AT)
        if seq & 1:
            _U64.pack_into(m, _SEQ_AT, seq + 1)
        self._published = self.committed_length
        # The header is advisory for readers (the checkpoint is the truth): no sync here.


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE: Final = 2
#: Appends at least this big start their writeback at once (see ``_start_writeback``).
WRITEBACK_MIN_BYTES: Final = 256 << 10


def _start_writeback(fd: int, pos: int, size: int) -> None:
    """Start writing freshly appended bytes to disk now (Linux ``sync_file_range`` with
    SYNC_FILE_RANGE_WRITE: asynchronous, no durability promise), so that the next commit's
    fdatasync finds little left to write and a bulk writer's disk I/O overlaps its work.
    Durability still comes only from the commit's fdatasync. A no-op on tmpfs, for small
    appends, and where the call does not exist."""
    if _sync_file_range is not None and size >= WRITEBACK_MIN_BYTES:
        _sync_file_range(fd, pos, size, _SYNC_FILE_RANGE_WRITE)


#: Buffers per pwritev call (Linux's IOV_MAX is 1024).
_IOV_MAX: Final = 512


def _pwritev_all(fd: int, views: list[memoryview], pos: int) -> None:
    views = [v.cast("B") for v in views if v.nbytes]
    while views:
        chunk = views[:_IOV_MAX]
        n = os.pwritev(fd, chunk, pos)
        pos += n
        done = 0
        while done < len(chunk) and n >= chunk[done].nbytes:
            n -= chunk[done].nbytes
            done += 1
        views = views[done:]
        if n:
            views[0] = views[0][n:]  # a short write ended inside this buffer


def _grow_file(fd: int, size: int, new_size: int) -> None:
    """Extend the file to ``new_size`` bytes of zeros, allocated now (fallocate) rather
    than sparse: appending into allocated blocks is several times faster (ext4 allocates
    a sparse file's blocks page by page at writeback; tmpfs zero-fills on first write
    either way). Where fallocate is unsupported the file is extended sparse."""
    try:
        os.posix_fallocate(fd, size, new_size - size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise  # ENOSPC and real I/O errors stop the service like a failed write
        os.ftruncate(fd, new_size)


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    data = data.cast("B")
    while data:
        n = os.pwrite(fd, data, pos)
        data = data[n:]
        pos += n


def _restore_undo(path: Path, fd: int, store_id: bytes, generation: int, length: int) -> None:
    """Copy back committed records an interrupted rewrite overwrote (see the module doc)."""
    undo = path.with_name(path.name + ".undo")
    try:
        raw = undo.read_bytes()
    except FileNotFoundError:
        return
    if len(raw) >= _UNDO_HEAD.size:
        magic, sid, gen, committed = _UNDO_HEAD.unpack_from(raw, 0)
        if magic == UNDO_MAGIC and sid == store_id and gen == generation and committed == length:
            pos = _UNDO_HEAD.size
            restored = 0
            while pos + _UNDO_ENTRY.size <= len(raw):
                start, count, crc = _UNDO_ENTRY.unpack_from(raw, pos)
                body = raw[pos + _UNDO_ENTRY.size : pos + _UNDO_ENTRY.size + count * RECORD_SIZE]
                if count <= 0 or len(body) != count * RECORD_SIZE or zlib.crc32(body) != crc:
                    break  # torn entry: it was being saved, so its records were never changed
                if start < 0 or start + count > length:
                    raise StoreCorrupt(
                        str(undo), f"undo entry [{start}, {start + count}) outside {length}"
                    )
                _pwrite_all(fd, memoryview(body), HEADER_SIZE + start * RECORD_SIZE)
                restored += count
                pos += _UNDO_ENTRY.size + count * RECORD_SIZE
            if restored:
                os.fsync(fd)
                log.warning(
                    "store %s: restored %d committed records an interrupted rewrite changed",
                    path,
                    restored,
                )
    undo.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoreSet:
    """A service's stores plus its checkpoint: the unit of commit.

    ``commit()`` is the only way records become durable, in this order:
    1. flush every store written since the last commit (msync);
    2. write the checkpoint (lengths, generations, upstream offsets consumed, service state):
       tmp file → fsync → rename → fsync(dir);
    3. publish the new lengths in the store headers and tell listeners (the feed server).
    An fsync error is never retried: it propagates and the service stops.
    """

    root: Path
    service: str
    stores: dict[str, Store] = field(default_factory=dict)
    upstream: dict[str, ckpt.UpstreamMark] = field(default_factory=dict)
    state: dict[str, object] = field(default_factory=dict)
    commits: int = 0
    _listeners: list[Callable[[], None]] = field(default_factory=list)
    _dirty: set[str] = field(default_factory=set)
    _committed_upstream: dict[str, ckpt.UpstreamMark] = field(default_factory=dict)
    #: The committed service state, encoded (``ckpt.encode_state``): comparing encodings is
    #: far cheaper than keeping a deep copy of a large state.
    _committed_state: bytes = b"{}"
    #: Keys of the stores the last commit flushed or whose mark changed (gauges, listeners).
    changed: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, root: str | Path, service: str) -> StoreSet:
        """Open (or create) the service's directory; reopen every store its checkpoint
        names at the committed length; files the checkpoint does not know were created
        after the last commit and are removed."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self = cls(root=root, service=service)
        point = ckpt.Checkpoint(root / "checkpoint.json").load()
        known: set[Path] = set()
        if point is not None:
            if point.service != service:
                raise StoreMismatch(str(root), f"checkpoint belongs to service {point.service!r}")
            self.commits = point.commits
            self.upstream = dict(point.upstream)
            self.state = dict(point.state)
            self._committed_upstream = dict(self.upstream)
            self._committed_state = ckpt.encode_state(self.state)
            for key, mark in point.stores.items():
                path = self.path_for(key)
                store = Store.open(
                    path,
                    committed_length=mark.length,
                    generation=mark.generation,
                    rewinds=[(g, o) for g, o in mark.rewinds],
                )
                if store.store_id.hex() != mark.store_id:
                    store.close()
                    raise StoreMismatch(
                        str(path),
                        f"store id {store.store_id.hex()} != checkpoint's {mark.store_id}",
                    )
                self.stores[key] = store
                known.add(path)
        for path in root.rglob("*.bars"):
            if path not in known:
                log.warning("%s: removing %s, created after the last commit", service, path)
                path.unlink()
        for path in root.rglob("*.bars.undo"):
            if path.with_suffix("") not in known:
                path.unlink()
        return self

    def path_for(self, key: str) -> Path:
        symbol, side, tf = key.split("/")
        return self.root / symbol / side / f"{tf}.bars"

    def get(self, key: str) -> Store | None:
        return self.stores.get(key)

    def create(self, meta: StoreMeta) -> Store:
        if meta.key in self.stores:
            raise StoreError(str(self.path_for(meta.key)), "store exists already")
        path = self.path_for(meta.key)
        if path.exists():  # left by a crash before any commit named it
            path.unlink()
        path.with_name(path.name + ".undo").unlink(missing_ok=True)
        store = Store.create(path, meta)
        self.stores[meta.key] = store
        self._dirty.add(meta.key)
        return store

    def ensure(self, meta: StoreMeta) -> Store:
        return self.stores.get(meta.key) or self.create(meta)

    def touch(self, key: str) -> None:
        """Note that a store was written (the next commit will flush it)."""
        self._dirty.add(key)

    def keys(self) -> Iterable[str]:
        return self.stores.keys()

    def __iter__(self) -> Iterator[Store]:
        return iter(self.stores.values())

    def on_commit(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def commit(self) -> int:
        """Make everything written so far durable (see the class docstring). Returns the commit number."""
        marks: dict[str, ckpt.StoreMark] = {}
        changed: set[str] = set()
        for key, store in self.stores.items():
            if (
                key in self._dirty
                or store.length != store.committed_length
                or store.stable_length < store.committed_length
            ):
                store.flush()
                changed.add(key)
            marks[key] = store.committed()
        self.commits += 1
        point = ckpt.CheckpointState(
            service=self.service,
            commits=self.commits,
            wall_ms=int(time.time() * 1000),
            stores=marks,
            upstream=dict(self.upstream),
            state=dict(self.state),
        )
        ckpt.Checkpoint(self.root / "checkpoint.json").save(point)
        for key, store in self.stores.items():
            store.mark_committed(marks[key])
        self._dirty.clear()
        self.changed = changed
        self._committed_upstream = dict(self.upstream)
        self._committed_state = ckpt.encode_state(self.state)
        for listener in self._listeners:
            listener()
        return self.commits

    def pending(self) -> int:
        """Records written since the last commit (0 when clean); upstream positions or
        service state that moved without a record changing count as 1, so they get
        committed too (a restart then resumes after them)."""
        moved = int(
            self.upstream != self._committed_upstream
            or ckpt.encode_state(self.state) != self._committed_state
        )
        return (
            sum(
                abs(s.length - s.committed_length) + (s.committed_length - s.stable_length)
                for s in self.stores.values()
            )
            + len(self._dirty)
            + moved
        )

    def close(self) -> None:
        for store in self.stores.values():
            store.close()
        self.stores.clear()
