"""The 64-byte record layout, pinned byte by byte (docs/FORMAT.md draws the same table)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from barstream.shared import record
from barstream.shared.record import JOURNAL_DTYPE, RECORD_DTYPE, RECORD_SIZE

# (field, byte offset, struct code) — the golden layout; a change here is a format change.
RECORD_LAYOUT = [
    ("ts_ms", 0, "q"),
    ("open", 8, "d"),
    ("high", 16, "d"),
    ("low", 24, "d"),
    ("close", 32, "d"),
    ("volume", 40, "d"),
    ("src_offset", 48, "q"),
    ("src_count", 56, "I"),
    ("flags", 60, "H"),
    ("session", 62, "B"),
    ("reserved", 63, "B"),
]
JOURNAL_LAYOUT = [
    ("ts_ms", 0, "q"),
    ("fetched_ms", 8, "q"),
    ("body_len", 16, "q"),
    ("digest", 24, "Q"),
    ("http_status", 32, "i"),
    ("attempts", 36, "I"),
    ("version", 40, "I"),
    ("kind", 44, "I"),
    ("src_offset", 48, "q"),
    ("src_count", 56, "I"),
    ("flags", 60, "H"),
    ("session", 62, "B"),
    ("reserved", 63, "B"),
]


@pytest.mark.parametrize(
    ("dtype", "layout"), [(RECORD_DTYPE, RECORD_LAYOUT), (JOURNAL_DTYPE, JOURNAL_LAYOUT)]
)
def test_every_field_at_its_pinned_offset(
    dtype: np.dtype, layout: list[tuple[str, int, str]]
) -> None:
    assert dtype.itemsize == RECORD_SIZE == 64
    assert dtype.names == tuple(name for name, _, _ in layout)
    fmt = "<" + "".join(code for _, _, code in layout)
    assert struct.calcsize(fmt) == 64  # no padding anywhere
    fields = dtype.fields
    assert fields is not None
    for name, offset, code in layout:
        field_dtype, field_offset = fields[name][:2]
        assert field_offset == offset, name
        assert field_dtype.itemsize == struct.calcsize(code), name
        assert field_dtype.str[0] in "<|", name  # little-endian (or a single byte)


@pytest.mark.parametrize(
    ("dtype", "layout"), [(RECORD_DTYPE, RECORD_LAYOUT), (JOURNAL_DTYPE, JOURNAL_LAYOUT)]
)
def test_record_reads_back_with_struct(dtype: np.dtype, layout: list[tuple[str, int, str]]) -> None:
    rec = np.zeros(2, dtype=dtype)
    values = {}
    for i, (name, _, code) in enumerate(layout):
        value = 1.5 + i if code == "d" else (-(i + 1) if code in "qi" else i + 1)
        rec[1][name] = value
        values[name] = value
    raw = rec.tobytes()
    assert len(raw) == 128
    for name, offset, code in layout:
        (got,) = struct.unpack_from("<" + code, raw, 64 + offset)
        assert got == values[name], name
    assert raw[:64] == bytes(64)


def test_known_bytes_decode_to_known_record() -> None:
    raw = struct.pack(
        "<q5dqIHBB", 1717171717000, 1.1, 1.2, 1.0, 1.15, 42.5, 7, 3, record.FLAG_PROVISIONAL, 2, 0
    )
    rec = record.from_bytes(raw)
    assert rec["ts_ms"][0] == 1717171717000
    assert (rec["open"][0], rec["high"][0], rec["low"][0], rec["close"][0]) == (1.1, 1.2, 1.0, 1.15)
    assert rec["volume"][0] == 42.5
    assert (rec["src_offset"][0], rec["src_count"][0]) == (7, 3)
    assert record.is_provisional(rec).tolist() == [True]
    assert rec["session"][0] == 2
    assert not rec.flags.writeable  # a view of immutable bytes


def test_from_bytes_rejects_partial_records() -> None:
    with pytest.raises(ValueError, match="not a whole number"):
        record.from_bytes(b"\x00" * 65)


def test_flags_are_distinct_bits() -> None:
    flags = [record.FLAG_PROVISIONAL, record.FLAG_REVISED, record.FLAG_LIVE, record.FLAG_DAY_END]
    assert all(f and not f & (f - 1) for f in flags)
    assert len(set(flags)) == len(flags)


def test_empty_is_zeroed() -> None:
    rec = record.empty(3)
    assert rec.dtype == RECORD_DTYPE and rec.tobytes() == bytes(192)
