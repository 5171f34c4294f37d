"""The undo file (``<store>.undo``): committed records' old bytes, saved before a rewrite.

Its byte layout is docs/FORMAT.md §2; when it is written, discarded and replayed is the
crash rule of FORMAT.md §4–5 (stated there once). In short, for the store writer:

- ``save`` appends one entry (the committed bytes of ``[start, start + n)``) and returns
  only once it is durable, so the caller may then change those records;
- ``discard`` drops the file once a commit has made it stale;
- ``restore`` runs when a writer opens the store: an undo file matching the checkpoint's
  store id, generation and length is copied back (a torn last entry is skipped), then the
  file is removed.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Final

from barstream.shared.errors import StoreCorrupt
from barstream.shared.fsio import fsync_dir, pwrite_all
from barstream.shared.header import HEADER_SIZE
from barstream.shared.record import RECORD_SIZE

log = logging.getLogger("barstream.store")

UNDO_MAGIC: Final = b"BSUNDO\x00\x01"
#: Head: magic, store id, generation, committed length.
UNDO_HEAD = struct.Struct("<8s16sQq")
#: Entry: start, count, crc32 of the bytes, then count x 64 bytes as last committed.
UNDO_ENTRY = struct.Struct("<qqI4x")
SUFFIX: Final = ".undo"


def undo_path(store_path: Path) -> Path:
    """The undo file of the store at ``store_path``."""
    return store_path.with_name(store_path.name + SUFFIX)


def save(
    fd: int,
    store_path: Path,
    start: int,
    data: bytes,
    *,
    store_id: bytes,
    generation: int,
    length: int,
) -> int:
    """Append the committed bytes of records ``[start, start + len(data) // 64)`` to the
    store's undo file, creating it when ``fd`` < 0 (head: ``store_id``, the committed
    ``generation`` and ``length``). Durable on return. Returns the undo file's fd."""
    created = fd < 0
    if created:
        fd = os.open(undo_path(store_path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pwrite_all(fd, memoryview(UNDO_HEAD.pack(UNDO_MAGIC, store_id, generation, length)), 0)
    end = os.lseek(fd, 0, os.SEEK_END)
    entry = UNDO_ENTRY.pack(start, len(data) // RECORD_SIZE, zlib.crc32(data))
    pwrite_all(fd, memoryview(entry + data), end)
    # Head and entry go to disk with one fsync (and, for a new file, its directory entry)
    # before the caller changes a byte of the saved records: a crash before that leaves
    # the records untouched, whatever the undo file holds.
    os.fsync(fd)
    if created:
        fsync_dir(store_path.parent)
    return fd


def discard(fd: int, store_path: Path) -> None:
    """Close and remove an undo file a commit made stale (its generation is now behind the
    checkpoint's, so it is ignored either way: no fsync needed)."""
    os.close(fd)
    undo_path(store_path).unlink(missing_ok=True)


def restore(store_path: Path, fd: int, store_id: bytes, generation: int, length: int) -> None:
    """Copy back into the store (open as ``fd``) the committed records an interrupted
    rewrite overwrote, if the undo file belongs to this committed state; then remove it."""
    undo = undo_path(store_path)
    try:
        raw = undo.read_bytes()
    except FileNotFoundError:
        return
    if len(raw) >= UNDO_HEAD.size and raw.count(0) != len(raw):
        magic, sid, gen, committed = UNDO_HEAD.unpack_from(raw, 0)
        _check_head(undo, magic, sid, store_id, gen, generation, committed, length)
        if gen == generation and committed == length:
            pos = UNDO_HEAD.size
            restored = 0
            while pos + UNDO_ENTRY.size <= len(raw):
                start, count, crc = UNDO_ENTRY.unpack_from(raw, pos)
                end = pos + UNDO_ENTRY.size + count * RECORD_SIZE
                body = raw[pos + UNDO_ENTRY.size : end]
                if count <= 0 or len(body) != count * RECORD_SIZE or zlib.crc32(body) != crc:
                    if count > 0 and end < len(raw) and raw[end:].count(0) != len(raw) - end:
                        # Bytes follow it: it is no torn last entry, it was damaged since.
                        raise StoreCorrupt(
                            str(undo),
                            f"undo entry at byte {pos} (records [{start}, {start + count})) "
                            "does not match its crc32, and more entries follow it",
                        )
                    break  # torn entry: it was being saved, so its records were never changed
                if start < 0 or start + count > length:
                    raise StoreCorrupt(
                        str(undo),
                        f"undo entry at byte {pos}: records [{start}, {start + count}) outside "
                        f"the committed {length}",
                    )
                pwrite_all(fd, memoryview(body), HEADER_SIZE + start * RECORD_SIZE)
                restored += count
                pos += UNDO_ENTRY.size + count * RECORD_SIZE
            if restored:
                os.fsync(fd)
                log.warning(
                    "store %s: restored %d committed records an interrupted rewrite changed",
                    store_path,
                    restored,
                )
    undo.unlink()


def _check_head(
    undo: Path,
    magic: bytes,
    sid: bytes,
    store_id: bytes,
    gen: int,
    generation: int,
    committed: int,
    length: int,
) -> None:
    """An undo file's head is this store's, of the committed state or an older (stale)
    one; anything else was damaged (FORMAT.md §2: the head is durable before any record
    changes, a commit that rewrote records always moves the generation on, and within a
    generation the committed length only grows — a restored undo file whose unlink was
    lost to a power cut has the same generation and a shorter length: stale)."""
    where = (
        "byte 0: bad magic"
        if magic != UNDO_MAGIC
        else "byte 8: another store's id"
        if sid != store_id
        else f"byte 24: generation {gen} is ahead of the checkpoint's {generation}"
        if gen > generation
        else f"byte 32: length {committed} is ahead of the checkpoint's {length}"
        if gen == generation and committed > length
        else ""
    )
    if where:
        raise StoreCorrupt(str(undo), f"undo file {where}: the file was damaged")
