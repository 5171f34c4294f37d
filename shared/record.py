"""The 64-byte record every barstream store holds.

Layout (little-endian, no padding)::

    offset size field       type     meaning
         0    8 ts_ms       <i8      bar open time, ms since the epoch, UTC
         8    8 open        <f8
        16    8 high        <f8
        24    8 low         <f8
        32    8 close       <f8
        40    8 volume      <f8
        48    8 src_offset  <i8      upstream offset of the first source record
        56    4 src_count   <u4      how many upstream records this one covers
        60    2 flags       <u2      FLAG_* bits below
        62    1 session     u1       session id (0 = none / whole day)
        63    1 reserved    u1       0

The last 16 bytes make every record self-describing: a stage that must recompute from an
upstream rewind at offset X finds its first affected record with a binary search on
``src_offset`` — no side database.

The downloader's fetch journal uses the same 64 bytes with its own field names
(``JOURNAL_DTYPE``): one record per fetched day. Both are documented in docs/FORMAT.md.
"""

from __future__ import annotations

from typing import Final

import numpy as np

RECORD_SIZE: Final = 64

#: The record may still change (the in-progress minute, the open bar of a timeframe).
FLAG_PROVISIONAL: Final = 0x0001
#: The record replaced an earlier version of the same bar (a revision of history).
FLAG_REVISED: Final = 0x0002
#: The record was built from a live (current-day) response rather than a final day file.
FLAG_LIVE: Final = 0x0004
#: Last record of a final (past) day response: the upstream is complete through that day's end.
FLAG_DAY_END: Final = 0x0008
#: Journal ``GAP`` records only: the user chose to skip this day (``barstream skip-day``) —
#: an explicit gap, not a failed fetch; ``digest`` names the skipped version (0: no body).
FLAG_SKIPPED: Final = 0x0010

RECORD_DTYPE: Final = np.dtype(
    [
        ("ts_ms", "<i8"),
        ("open", "<f8"),
        ("high", "<f8"),
        ("low", "<f8"),
        ("close", "<f8"),
        ("volume", "<f8"),
        ("src_offset", "<i8"),
        ("src_count", "<u4"),
        ("flags", "<u2"),
        ("session", "u1"),
        ("reserved", "u1"),
    ]
)

#: Fetch-journal record kinds (``JOURNAL_DTYPE['kind']``).
JOURNAL_DAY: Final = 1  # a final past-day response
JOURNAL_LIVE: Final = 2  # the current day so far (provisional, rewritten as it grows)
JOURNAL_GAP: Final = 3  # a day with no usable body: not fetched after retries, or skipped
JOURNAL_EMPTY: Final = 4  # reserved: a day the source says does not exist yet

JOURNAL_DTYPE: Final = np.dtype(
    [
        ("ts_ms", "<i8"),  # UTC midnight of the day the response covers
        ("fetched_ms", "<i8"),  # wall-clock time of the fetch
        ("body_len", "<i8"),  # bytes of the raw response body (0 for a gap)
        ("digest", "<u8"),  # first 8 bytes of blake2b(body), little-endian
        ("http_status", "<i4"),  # last HTTP status seen (0 = none / connection error)
        ("attempts", "<u4"),  # requests made for this fetch
        ("version", "<u4"),  # 1 + how many earlier versions of this day the journal holds
        ("kind", "<u4"),  # JOURNAL_* above
        ("src_offset", "<i8"),  # unused upstream offset (the downloader has no upstream): -1
        ("src_count", "<u4"),  # 0
        ("flags", "<u2"),  # FLAG_* (PROVISIONAL for a live day, REVISED for a new version)
        ("session", "u1"),  # 0
        ("reserved", "u1"),  # 0
    ]
)

assert RECORD_DTYPE.itemsize == RECORD_SIZE
assert JOURNAL_DTYPE.itemsize == RECORD_SIZE
assert RECORD_DTYPE.fields is not None and JOURNAL_DTYPE.fields is not None
assert {n: RECORD_DTYPE.fields[n][1] for n in RECORD_DTYPE.names or ()} == {
    "ts_ms": 0,
    "open": 8,
    "high": 16,
    "low": 24,
    "close": 32,
    "volume": 40,
    "src_offset": 48,
    "src_count": 56,
    "flags": 60,
    "session": 62,
    "reserved": 63,
}
# The self-describing tail sits at the same place in both layouts.
for _name in ("src_offset", "src_count", "flags", "session", "reserved"):
    assert RECORD_DTYPE.fields[_name][1] == JOURNAL_DTYPE.fields[_name][1]

#: Store kinds (header ``kind`` field), which dtype a store holds.
KIND_BARS: Final = 1
KIND_JOURNAL: Final = 2
#: A feature store (docs/FORMAT.md §11): each bar record followed by its feature records
#: (``services/features/layout.py``), viewed here as bar records — the fields every kind
#: shares (``ts_ms``, ``flags``) are where a bar has them.
KIND_FEATURES: Final = 3

DTYPES: Final = {KIND_BARS: RECORD_DTYPE, KIND_JOURNAL: JOURNAL_DTYPE, KIND_FEATURES: RECORD_DTYPE}


def empty(n: int = 0) -> np.ndarray:
    """A zeroed array of ``n`` bar records."""
    return np.zeros(n, dtype=RECORD_DTYPE)


def from_bytes(data: bytes | memoryview | bytearray, dtype: np.dtype = RECORD_DTYPE) -> np.ndarray:
    """View raw little-endian record bytes as a structured array (zero copy, read-only)."""
    if len(data) % RECORD_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {RECORD_SIZE}-byte records")
    return np.frombuffer(data, dtype=dtype)


def is_provisional(records: np.ndarray) -> np.ndarray:
    """Boolean mask of the provisional records."""
    mask: np.ndarray = (records["flags"] & FLAG_PROVISIONAL) != 0
    return mask
