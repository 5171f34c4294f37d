"""The store header: what a store holds (``StoreMeta``) and its 4096-byte codec.

The byte layout is drawn in docs/FORMAT.md §1.1 and pinned by tests/unit/test_store.py:
a fixed part written once at create (magic, version, sizes, kind, created_ms, store id,
symbol/side/timeframe/alignment as NUL-padded UTF-8) covered by a CRC32, then three
mutable, advisory words the writer publishes for readers (``LENGTH_AT``, ``GENERATION_AT``,
``SEQ_AT``; see FORMAT.md §6 for the seqlock).

``encode_header`` builds the fixed part (mutable words zero); ``decode_header`` checks, in
FORMAT.md's order, size, magic, version, CRC, header/record size, kind, a non-negative
length and the zero bytes, raising ``StoreCorrupt`` naming the file and the header byte; a string too long for its field raises
``StoreError``. Pure functions: no I/O.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from barstream.shared.errors import StoreCorrupt, StoreError
from barstream.shared.record import DTYPES, KIND_BARS, RECORD_SIZE

MAGIC: Final = b"BARSTRM\x00"
FORMAT_VERSION: Final = 1
HEADER_SIZE: Final = 4096

#: The fixed part, magic..alignment (FORMAT.md §1.1), covered by the CRC.
FIXED = struct.Struct("<8sIIII8s16s32s8s16s64s")
CRC_AT: Final = FIXED.size  # u4 crc32 of the fixed part
LENGTH_AT: Final = 192  # i8 published committed length (records)
GENERATION_AT: Final = 200  # u8 published generation
SEQ_AT: Final = 208  # u8 seqlock counter (odd = writer rewriting)
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
assert CRC_AT + 4 <= LENGTH_AT


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
    """A decoded header: the fixed part plus the published words."""

    meta: StoreMeta
    store_id: bytes
    created_ms: int
    length: int
    generation: int
    seq: int


def encode_header(meta: StoreMeta, store_id: bytes, created_ms: int, path: str = "") -> bytes:
    """The 4096 header bytes of a new store (published length, generation and seq zero)."""
    fixed = FIXED.pack(
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
    buf[: FIXED.size] = fixed
    struct.pack_into("<I", buf, CRC_AT, zlib.crc32(fixed))
    return bytes(buf)


def decode_header(buf: bytes | memoryview | mmap.mmap, path: str) -> Header:
    """Decode and check a header (see the module docstring); ``path`` names the file in errors."""
    if len(buf) < HEADER_SIZE:
        raise StoreCorrupt(
            path, f"header: file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    fixed = bytes(buf[: FIXED.size])
    (magic, version, header_size, record_size, kind, created, store_id, sym, side, tf, align) = (
        FIXED.unpack(fixed)
    )
    if magic != MAGIC:
        raise StoreCorrupt(path, f"header byte 0: bad magic {magic!r}: not a barstream store")
    if version != FORMAT_VERSION:
        raise StoreCorrupt(
            path, f"header byte 8: format version {version}, this build reads {FORMAT_VERSION}"
        )
    (crc,) = struct.unpack_from("<I", buf, CRC_AT)
    if crc != zlib.crc32(fixed):
        raise StoreCorrupt(
            path,
            f"header bytes [0, {CRC_AT}) do not match their checksum at byte {CRC_AT}: "
            "the header was damaged",
        )
    if header_size != HEADER_SIZE or record_size != RECORD_SIZE:
        raise StoreCorrupt(
            path,
            f"header byte 12: header size {header_size} / record size {record_size} unsupported",
        )
    if kind not in DTYPES:
        raise StoreCorrupt(path, f"header byte 20: unknown store kind {kind}")
    meta = StoreMeta(_unpack_str(sym), _unpack_str(side), _unpack_str(tf), _unpack_str(align), kind)
    (length,) = I64.unpack_from(buf, LENGTH_AT)
    (generation,) = U64.unpack_from(buf, GENERATION_AT)
    (seq,) = U64.unpack_from(buf, SEQ_AT)
    if length < 0:
        raise StoreCorrupt(path, f"header byte {LENGTH_AT}: negative committed length {length}")
    for lo, hi in ((CRC_AT + 4, LENGTH_AT), (SEQ_AT + 8, HEADER_SIZE)):
        zone = bytes(buf[lo:hi])
        if zone.count(0) != hi - lo:
            at = lo + next(i for i, b in enumerate(zone) if b)
            raise StoreCorrupt(path, f"header byte {at}: must be zero (bytes [{lo}, {hi}) are)")
    (created_ms,) = struct.unpack("<q", created)
    return Header(meta, store_id, created_ms, length, generation, seq)


def _pack_str(value: str, size: int, what: str, path: str) -> bytes:
    raw = value.encode()
    if len(raw) > size:
        raise StoreError(path, f"{what} {value!r} is longer than {size} bytes")
    return raw


def _unpack_str(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode()
