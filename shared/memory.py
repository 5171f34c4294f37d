"""Keep a service's anonymous memory flat: glibc malloc settings, applied at start.

A stage receives batches of megabytes through ZeroMQ, whose I/O thread allocates each message
in its own malloc arena; numpy allocates the decoded arrays in the main thread's. glibc's
defaults then keep freed memory resident:

- the *dynamic mmap threshold*: once a large block (a batch) is freed, the threshold rises
  to its size (up to 32 MiB on 64-bit), so later batches come from the heap instead of their
  own mapping, and a heap is trimmed only from its top — one long-lived small block above
  them pins every freed megabyte below it;
- one arena per thread that ever allocated (up to 8 × cores): each keeps its own high-water
  mark of freed memory.

``tune()`` fixes the mmap threshold (``M_MMAP_THRESHOLD``; blocks above it are mapped and
returned to the system when freed; setting it also turns the dynamic adjustment off) and caps
the arenas (``M_ARENA_MAX``), through ``mallopt(3)`` — so it holds however the process was
started (supervisord, compose, a rebuild, a test), unlike the ``MALLOC_*`` environment
variables. Nothing changes on a libc without ``mallopt`` (musl, macOS).
``BARSTREAM_MALLOC_TUNE=0`` leaves glibc's defaults (for side-by-side measurements).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Final

#: mallopt(3) parameters (glibc malloc.h).
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8
#: Blocks of this size or more get their own mapping, returned to the system when freed.
MMAP_THRESHOLD_BYTES: Final = 256 << 10
#: Malloc arenas per process (the main thread's and one shared by the others).
ARENA_MAX: Final = 2


def tune() -> bool:
    """Apply the settings; True when glibc took them."""
    if os.environ.get("BARSTREAM_MALLOC_TUNE", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return bool(mallopt(M_ARENA_MAX, ARENA_MAX) == 1 and ok)
