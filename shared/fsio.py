"""File-system primitives: whole writes, preallocation, early writeback, atomic replacement.

Contract of each:

- ``pwrite_all`` / ``pwritev_all``: write every byte at ``pos`` (the loop over short writes);
  nothing is durable until the caller syncs.
- ``grow_file``: extend a file with allocated zeros (``posix_fallocate``), sparse where the
  file system cannot allocate; ENOSPC and I/O errors propagate.
- ``start_writeback``: ask Linux to start writing a range back now (``sync_file_range``
  with SYNC_FILE_RANGE_WRITE): no durability promise, a no-op where unavailable.
- ``fsync_dir``: make a directory's entries (a create, link, rename or unlink) durable.
- ``create_new``: create a file durably, never replacing one that exists (a new store).
- ``atomic_write``: replace a file so that any reader, and the file after a crash, holds the
  old bytes or the whole new ones, never a mix (docs/FORMAT.md §9 "Atomic file replacement").

- ``space_for``: turn a write's ENOSPC / EDQUOT into ``DiskFull`` naming the file, the
  bytes the write needed and the bytes free (``free_bytes``).

An fsync error is never retried here: it propagates to the caller (and stops the service).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from barstream.shared.errors import DiskFull

#: Buffers per pwritev call (Linux's IOV_MAX is 1024).
IOV_MAX: Final = 512
#: Appends at least this big start their writeback at once (see ``start_writeback``).
WRITEBACK_MIN_BYTES: Final = 256 << 10
_SYNC_FILE_RANGE_WRITE: Final = 2
#: The errnos of a full file system (or quota).
NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system holding ``path`` (or
    its nearest existing parent); -1 when that cannot be told."""
    for p in (path, *path.parents):
        with contextlib.suppress(OSError):
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
    return -1


@contextlib.contextmanager
def space_for(path: Path, need_bytes: int, what: str = "write") -> Iterator[None]:
    """Run a write to ``path`` that needs ``need_bytes``; a full file system raises
    ``DiskFull`` (from the OSError) naming the file, the need and the free space."""
    try:
        yield
    except OSError as e:
        if e.errno in NO_SPACE:
            raise DiskFull(str(path), need_bytes, free_bytes(path), what) from e
        raise


def pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    """Write all of ``data`` at byte ``pos`` of ``fd``."""
    data = data.cast("B")
    while data:
        n = os.pwrite(fd, data, pos)
        data = data[n:]
        pos += n


def pwritev_all(fd: int, views: list[memoryview], pos: int) -> None:
    """Write the buffers back to back from byte ``pos`` with as few ``pwritev`` calls as
    ``IOV_MAX`` allows (the same bytes as writing their concatenation, without building it)."""
    views = [v.cast("B") for v in views if v.nbytes]
    while views:
        chunk = views[:IOV_MAX]
        n = os.pwritev(fd, chunk, pos)
        pos += n
        done = 0
        while done < len(chunk) and n >= chunk[done].nbytes:
            n -= chunk[done].nbytes
            done += 1
        views = views[done:]
        if n:
            views[0] = views[0][n:]  # a short write ended inside this buffer


def grow_file(fd: int, size: int, new_size: int) -> None:
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


def start_writeback(fd: int, pos: int, size: int) -> None:
    """Start writing freshly written bytes to disk now (Linux ``sync_file_range`` with
    SYNC_FILE_RANGE_WRITE: asynchronous, no durability promise), so that the next commit's
    fdatasync finds little left to write and a bulk writer's disk I/O overlaps its work.
    Durability still comes only from the commit's fdatasync. A no-op on tmpfs, below
    ``WRITEBACK_MIN_BYTES``, and where the call does not exist."""
    if _sync_file_range is not None and size >= WRITEBACK_MIN_BYTES:
        _sync_file_range(fd, pos, size, _SYNC_FILE_RANGE_WRITE)


def fsync_dir(path: Path) -> None:
    """fsync a directory: its entries created, renamed or removed so far become durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old file or the whole new one,
    never a torn one: a uniquely named tmp file beside it (``.<name>.<pid>.<random>.tmp``)
    → fsync → rename over ``path`` → fsync the directory. Missing parent directories are
    created (each one's own parent fsynced). ``durable=False`` skips the fsyncs (still
    atomic for readers, not across a power loss). A failure removes the tmp file; a crash
    may leave one behind, which nothing reads."""
    with space_for(path, len(data), "replacing it"):
        _atomic_write(path, data, durable=durable)


def _atomic_write(path: Path, data: bytes, *, durable: bool) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:  # the first file of a new directory: create it, then retry
        make_dirs(path.parent, durable=durable)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def create_new(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data``, durably, never replacing an existing file
    (``FileExistsError``): ``<path>.tmp`` → write → fsync → link to ``path`` (fails if it
    exists) → unlink the tmp → fsync the directory. The directory must exist."""
    tmp = path.with_name(path.name + ".tmp")
    with space_for(path, len(data), "creating it"):
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def make_dirs(path: Path, *, durable: bool = True) -> None:
    """``mkdir -p``; ``durable``: fsync the parent of each directory made, so a store or
    checkpoint created in a new directory survives a power loss with its directory."""
    if path.is_dir():
        return
    make_dirs(path.parent, durable=durable)
    try:
        path.mkdir()
    except FileExistsError:
        return
    if durable:
        fsync_dir(path.parent)
