"""Stores: round trips, rewinds, replace_from, damaged files, readers, snapshots, undo."""

from __future__ import annotations

import logging
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barstream.shared import header
from barstream.shared.errors import (
    BarstreamError,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreMismatch,
    StoreRangeError,
)
from barstream.shared.header import HEADER_SIZE, StoreMeta
from barstream.shared.record import JOURNAL_DTYPE, KIND_JOURNAL
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet
from tests.conftest import REPO
from tests.support.plan import Model, make_records

META = StoreMeta("EUR-USD", "BID", "1m", "utc")
KEY = META.key
HYP = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None


@pytest.fixture
def fast_dirs():
    """Temp dirs on tmpfs when there is one: Hypothesis runs many fsync-heavy examples."""
    made: list[tempfile.TemporaryDirectory[str]] = []

    def make() -> Path:
        made.append(tempfile.TemporaryDirectory(prefix="bs-test-", dir=FAST_DIR))
        return Path(made[-1].name)

    yield make
    for d in made:
        d.cleanup()


def recs(start: int, n: int, salt: int = 0) -> np.ndarray:
    return make_records(1234, salt, 0, start, n)


def new_set(root: Path, committed: int = 0) -> tuple[StoreSet, Store]:
    """A StoreSet with the META store, holding ``committed`` committed records."""
    ss = StoreSet.open(root, "svc")
    s = ss.ensure(META)
    if committed:
        s.append(recs(0, committed))
        ss.commit()
    return ss, s


def reopened(root: Path) -> bytes:
    """The META store's records as the next ``StoreSet.open`` (recovery included) reads
    them; b"" when it has no such store."""
    ss = StoreSet.open(root, "svc")
    try:
        store = ss.get(KEY)
        return store.records.tobytes() if store is not None else b""
    finally:
        ss.close()


# -- round trips ---------------------------------------------------------------------------


@HYP
@given(batches=st.lists(st.tuples(st.integers(0, 300), st.booleans()), min_size=1, max_size=12))
def test_append_commit_reopen_read(fast_dirs, batches) -> None:
    root = fast_dirs()
    ss, s = new_set(root)
    model = Model()
    committed = b""
    for i, (n, commit) in enumerate(batches):
        r = recs(s.length, n, i)
        s.append(r)
        model.append(r)
        ss.touch(KEY)
        if commit:
            ss.commit()
            committed = model.records.tobytes()
    assert s.records.tobytes() == model.records.tobytes()
    ss.close()
    assert reopened(root) == committed


op_strategy = st.lists(
    st.tuples(
        st.sampled_from(["append", "write", "replace", "truncate", "commit"]),
        st.floats(0, 1),
        st.integers(0, 200),
        st.integers(0, 3),
    ),
    min_size=1,
    max_size=25,
)


@HYP
@given(ops=op_strategy)
def test_overwrite_from_offset_matches_model(fast_dirs, ops) -> None:
    """truncate+append, write and replace_from in any order equal a plain array model,
    before and after commit + reopen; replace_from returns the first changed offset."""
    root = fast_dirs()
    ss, s = new_set(root)
    model = Model()
    committed = b""
    for i, (kind, where, n, keep) in enumerate(ops):
        at = int(where * s.length)
        if kind == "append":
            r = recs(s.length, n, i)
            s.append(r)
            model.append(r)
        elif kind == "write":
            r = recs(at, n, i)
            s.write(at, r)
            model.write(at, r)
        elif kind == "replace":
            # keep `keep` records as they are, then new ones: a provisional-style update
            same = model.records[at : at + keep].copy()
            r = np.concatenate([same, recs(at + len(same), n, i)])
            before = model.records.tobytes()
            first = s.replace_from(at, r)
            model.write(at, r)
            after = model.records.tobytes()
            # the first changed offset: bytes before it are unchanged
            assert before[: first * 64] == after[: first * 64]
            if first < len(after) // 64 and first < len(before) // 64:
                assert before[first * 64 : first * 64 + 64] != after[first * 64 : first * 64 + 64]
        elif kind == "truncate":
            s.truncate(at)
            model.truncate(at)
        else:
            ss.commit()
            committed = model.records.tobytes()
        ss.touch(KEY)
        assert s.records.tobytes() == model.records.tobytes()
    ss.close()
    assert reopened(root) == committed


def test_replace_from_no_change_is_no_rewind(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    gen = s.generation
    assert s.replace_from(90, s.records[90:].copy()) == 100 == s.length
    assert s.stable_length == 100 and ss.pending() == 0
    ss.commit()
    assert s.generation == gen  # nothing was rewritten: no new generation


def test_replace_from_rewrites_only_from_first_difference(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    new = s.records[95:].copy()
    new["close"][3] += 1.0  # offset 98 changes
    assert s.replace_from(95, np.concatenate([new, recs(100, 5, 9)])) == 98
    assert s.stable_length == 98 and s.length == 105
    ss.commit()
    assert s.rewinds[-1] == (s.generation, 98)


def test_replace_from_shorter_truncates(tmp_path: Path) -> None:
    _ss, s = new_set(tmp_path)
    s.append(recs(0, 50))
    assert s.replace_from(40, s.records[40:45].copy()) == 45
    assert s.length == 45
    assert s.replace_from(45, recs(0, 0)) == 45 == s.length


def test_replace_from_rejects_hole_and_dtype(tmp_path: Path) -> None:
    _ss, s = new_set(tmp_path)
    s.append(recs(0, 5))
    with pytest.raises(StoreError, match="outside"):
        s.replace_from(6, recs(6, 1))
    with pytest.raises(StoreError, match="dtype"):
        s.replace_from(0, np.zeros(1, dtype=JOURNAL_DTYPE))


def test_write_errors(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path)
    s.append(recs(0, 5))
    with pytest.raises(StoreError, match="hole"):
        s.write(7, recs(7, 1))
    with pytest.raises(StoreError, match="dtype"):
        s.append(np.zeros(1, dtype=JOURNAL_DTYPE))
    with pytest.raises(IndexError):
        s.truncate(6)
    with pytest.raises(IndexError):
        s.view(0, 6)
    ss.close()
    with pytest.raises(StoreClosed):
        s.append(recs(5, 1))


@pytest.mark.parametrize(
    ("start", "stop"), [(0, 6), (3, 9), (-1, 2), (4, 2), (5, 6)], ids=lambda v: str(v)
)
def test_view_of_a_bad_range_is_a_located_store_range_error(
    tmp_path: Path, start: int, stop: int
) -> None:
    ss, s = new_set(tmp_path)
    s.append(recs(0, 5))
    for read in (s.view, s.read_bytes, s.read_into):
        with pytest.raises(StoreRangeError) as info:
            read(start, stop)
        e = info.value
        assert (e.path, e.start, e.stop, e.length) == (str(s.path), start, stop, 5)
        assert str(e) == f"{s.path}: records [{start}, {stop}) outside the store's [0, 5)"
        assert isinstance(e, StoreError) and isinstance(e, BarstreamError)
        assert isinstance(e, IndexError)  # what these raised before: callers keep working
    assert len(s.view(5, 5)) == 0 and len(s.view(0, 5)) == 5  # the edges are in range
    ss.close()


def test_reader_view_past_the_published_length_is_a_store_range_error(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path)
    s.append(recs(0, 8))
    ss.commit()
    s.append(recs(8, 4))  # not committed: a reader does not see it
    with Store.open(s.path, writable=False) as reader:
        with pytest.raises(
            StoreRangeError, match=r"records \[0, 12\) outside the store's \[0, 8\)"
        ):
            reader.view(0, 12)
        assert reader.view(0, 8).tobytes() == s.view(0, 8).tobytes()
    ss.close()


def test_rewinds_outside_the_store_are_store_range_errors(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path)
    s.append(recs(0, 5))
    with pytest.raises(StoreRangeError, match=r"truncate at 6 outside \[0, 5\]") as info:
        s.truncate(6)
    assert (info.value.path, info.value.start, info.value.length) == (str(s.path), 6, 5)
    with pytest.raises(StoreRangeError, match="record 7: write at 7 would leave a hole") as info:
        s.write(7, recs(7, 2))
    assert (info.value.start, info.value.stop, info.value.length) == (7, 9, 5)
    assert info.value.offset == 7
    with pytest.raises(StoreRangeError, match=r"replace at -1 outside \[0, 5\]"):
        s.replace_from(-1, recs(0, 1))
    assert s.length == 5 and s.records.tobytes() == recs(0, 5).tobytes()  # nothing changed
    ss.close()


def test_search_and_range(tmp_path: Path) -> None:
    _ss, s = new_set(tmp_path)
    s.append(recs(0, 10))  # ts_ms == offset
    assert s.search(3) == 3 and s.search(3, "right") == 4 and s.search(100) == 10
    assert s.range(2, 5)["ts_ms"].tolist() == [2, 3, 4]


def test_journal_store_holds_journal_records(tmp_path: Path) -> None:
    ss = StoreSet.open(tmp_path, "downloader")
    s = ss.create(StoreMeta("EUR-USD", "BID", "journal", kind=KIND_JOURNAL))
    j = np.zeros(2, dtype=JOURNAL_DTYPE)
    j["body_len"] = [10, 20]
    s.append(j)
    ss.commit()
    ss.close()
    s2 = Store.open(tmp_path / "EUR-USD/BID/journal.bars", writable=False)
    assert s2.dtype == JOURNAL_DTYPE and s2.records["body_len"].tolist() == [10, 20]
    s2.close()


# -- generations and the rewind log --------------------------------------------------------


def test_generation_bumps_only_when_committed_records_change(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=10)
    s.append(recs(10, 5))
    s.truncate(12)  # only uncommitted records: no new generation
    ss.commit()
    assert s.generation == 0 and s.rewinds == []
    s.write(7, recs(7, 3, 1))
    ss.commit()
    assert s.generation == 1 and s.rewinds == [(1, 7)]
    assert s.rewind_floor(0) == 7 and s.rewind_floor(1) is None


def test_rewind_log_compacts_conservatively(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    for i in range(10):
        s.write(90 - i, recs(90 - i, 10 + i, i))
        ss.touch(KEY)
        mark = s.committed(rewinds_max=4)
        ss.commit()
        s.rewinds = list(mark.rewinds)
    assert len(s.rewinds) == 4
    assert s.rewind_floor(0) == 81  # the lowest rewrite of all is still covered
    assert s.rewind_floor(s.generation - 1) == 81  # the latest one


# -- readers -------------------------------------------------------------------------------


def test_reader_sees_only_committed_records(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=10)
    reader = Store.open(s.path, writable=False)
    s.append(recs(10, 5))
    assert reader.refresh() == 10
    assert reader.snapshot().tobytes() == s.records[:10].tobytes()
    ss.commit()
    assert reader.refresh() == 15
    with pytest.raises(StoreError, match="read-only"):
        reader.append(recs(15, 1))
    assert not reader.records.flags.writeable
    reader.close()


def test_snapshot_during_rewind_is_the_untouched_prefix(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    old = s.records.tobytes()
    reader = Store.open(s.path, writable=False)
    s.write(60, recs(60, 50, 1))  # rewriting committed records, not committed yet
    snap = reader.snapshot()
    assert snap.tobytes() == old[: 60 * 64]  # readers stop where the rewrite starts
    s.truncate(30)
    s.append(recs(30, 10, 2))
    assert reader.snapshot().tobytes() == old[: 30 * 64]
    ss.commit()
    assert reader.snapshot().tobytes() == s.records.tobytes()
    reader.close()


def test_snapshot_is_consistent_while_another_process_rewinds(tmp_path: Path) -> None:
    """A child writer rewinds and commits as fast as it can; every snapshot the parent
    takes is a prefix of the content of a commit in the window it was taken in."""
    seed = random.randrange(1 << 30)
    root = tmp_path / "w"
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.support.crash_writer", str(root), str(seed), "100"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("ready"), f"seed {seed}"
        assert child.stdout.readline().startswith("ack"), f"seed {seed}"
        reader = Store.open(root / "EUR-USD/BID/1m.bars", writable=False)
        snaps = []
        deadline = time.monotonic() + 0.8
        while time.monotonic() < deadline:
            snaps.append(reader.snapshot().tobytes())
        reader.close()
    finally:
        child.kill()
        child.wait(10)
    stores = StoreSet.open(root, "crash")
    last = stores.commits
    stores.close()
    model = Model()
    expected = [b""]
    for c in range(1, last + 2):
        model.step(seed, c, max_batch=100)
        expected.append(model.records.tobytes())
    k = 0
    for i, snap in enumerate(snaps):
        while k < len(expected) and not expected[k].startswith(snap):
            k += 1  # snapshots move forward in commit order
        assert k < len(expected), f"seed {seed}: snapshot {i} ({len(snap) // 64} records) is torn"
    assert len(snaps) > 10


# -- damaged stores ------------------------------------------------------------------------


def make_store(tmp_path: Path, n: int = 10) -> Path:
    ss, _ = new_set(tmp_path, committed=n)
    ss.close()
    return tmp_path / "EUR-USD" / "BID" / "1m.bars"


def patch(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def recrc(path: Path) -> None:
    raw = path.read_bytes()
    fixed = raw[: header.FIXED.size]
    patch(path, header.CRC_AT, struct.pack("<I", zlib.crc32(fixed)))


def test_bad_magic(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    patch(path, 0, b"NOTASTOR")
    with pytest.raises(StoreCorrupt, match="bad magic") as e:
        Store.open(path)
    assert e.value.path == str(path) and str(path) in str(e.value)


def test_bad_header_crc(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    # byte 48: the symbol's first ("E" of EUR-USD; byte 40 was inside the random store id,
    # which held "X" once in 256 runs, and then nothing changed)
    assert path.read_bytes()[48:49] == b"E"
    patch(path, 48, b"X")
    with pytest.raises(StoreCorrupt, match="checksum") as e:
        Store.open(path, writable=False)
    assert str(path) in str(e.value)


def test_wrong_version(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    patch(path, 8, struct.pack("<I", 99))
    recrc(path)
    with pytest.raises(StoreCorrupt, match="format version 99"):
        Store.open(path)


def test_wrong_record_size_and_kind(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    patch(path, 16, struct.pack("<I", 32))
    recrc(path)
    with pytest.raises(StoreCorrupt, match="record size 32"):
        Store.open(path)
    patch(path, 16, struct.pack("<I", 64))
    patch(path, 20, struct.pack("<I", 77))
    recrc(path)
    with pytest.raises(StoreCorrupt, match="unknown store kind 77"):
        Store.open(path)


def test_short_header(tmp_path: Path) -> None:
    path = tmp_path / "x.bars"
    path.write_bytes(b"BARSTRM\x00" + bytes(100))
    with pytest.raises(StoreCorrupt, match="shorter than the 4096-byte header"):
        Store.open(path)


def test_committed_length_beyond_file(tmp_path: Path) -> None:
    path = make_store(tmp_path, 10)
    os.truncate(path, HEADER_SIZE + 7 * 64 + 10)  # 7 whole records and a torn one
    with pytest.raises(StoreCorrupt, match="committed length 10 but the file holds only 7") as e:
        StoreSet.open(tmp_path, "svc")
    assert e.value.offset == 7 and str(path) in str(e.value) and "record 7" in str(e.value)


def test_negative_published_length(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    patch(path, header.LENGTH_AT, struct.pack("<q", -5))
    with pytest.raises(StoreCorrupt, match="negative committed length"):
        Store.open(path, writable=False)


def test_torn_tail_is_dropped_and_logged(tmp_path: Path, caplog) -> None:
    path = make_store(tmp_path, 10)
    with open(path, "ab") as f:
        f.write(b"\xff" * 100)  # a crash left uncommitted bytes past the committed length
    with caplog.at_level(logging.WARNING, logger="barstream.store"):
        ss = StoreSet.open(tmp_path, "svc")
    assert any("torn tail past committed length 10" in r.getMessage() for r in caplog.records)
    assert str(path) in caplog.text
    assert os.path.getsize(path) == HEADER_SIZE + 10 * 64
    assert ss.stores[KEY].length == 10
    ss.close()


def test_open_missing_and_mismatched(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store file"):
        Store.open(tmp_path / "nope.bars")
    path = make_store(tmp_path)
    with pytest.raises(StoreMismatch, match="expected XAU-USD/BID/1m"):
        Store.open(path, expect=StoreMeta("XAU-USD", "BID", "1m"))
    with pytest.raises(StoreMismatch, match="belongs to service 'svc'"):
        StoreSet.open(tmp_path, "other")


def test_store_id_mismatch(tmp_path: Path) -> None:
    path = make_store(tmp_path)
    patch(path, 32, b"\x01" * 16)  # another store's id (the header says who it is)
    recrc(path)
    with pytest.raises(StoreMismatch, match="store id"):
        StoreSet.open(tmp_path, "svc")


def test_files_created_after_last_commit_are_removed(tmp_path: Path) -> None:
    ss, _s = new_set(tmp_path)
    ss.commit()
    extra = ss.create(StoreMeta("XAU-USD", "ASK", "1m"))
    extra.append(recs(0, 3))
    ss.close()  # crash before the commit that would name it
    ss2 = StoreSet.open(tmp_path, "svc")
    assert list(ss2.keys()) == [KEY]
    assert not (tmp_path / "XAU-USD").joinpath("ASK", "1m.bars").exists()
    ss2.close()


def test_header_fields_too_long(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="symbol"):
        Store.create(tmp_path / "x.bars", StoreMeta("X" * 40, "BID", "1m"))


def test_meta_key_round_trip() -> None:
    assert StoreMeta.from_key("EUR-USD/BID/1h").key == "EUR-USD/BID/1h"
    with pytest.raises(ValueError, match="symbol/side/timeframe"):
        StoreMeta.from_key("EUR-USD/BID")


# -- the undo file -------------------------------------------------------------------------


def test_interrupted_rewrite_is_undone_on_open(tmp_path: Path, caplog) -> None:
    ss, s = new_set(tmp_path, committed=100)
    committed = s.records.tobytes()
    s.write(50, recs(50, 80, 1))  # overwrites committed records 50..99 in the file
    assert s.undo_path.exists()
    ss.close()  # "crash": no commit
    with caplog.at_level(logging.WARNING, logger="barstream.store"):
        ss2 = StoreSet.open(tmp_path, "svc")
    assert ss2.stores[KEY].records.tobytes() == committed
    assert "restored 50 committed records" in caplog.text
    assert not s.undo_path.exists()
    ss2.close()


def test_undo_grows_when_the_rewrite_goes_deeper(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    committed = s.records.tobytes()
    s.write(80, recs(80, 30, 1))
    s.write(20, recs(20, 100, 2))
    s.write(50, recs(50, 10, 3))
    ss.close()
    assert reopened(tmp_path) == committed


def test_stale_or_torn_undo_is_ignored(tmp_path: Path) -> None:
    ss, s = new_set(tmp_path, committed=100)
    s.write(50, recs(50, 10, 1))
    undo = s.undo_path.read_bytes()
    ss.commit()  # the rewrite is committed: the undo is stale
    after = s.records.tobytes()
    assert not s.undo_path.exists()
    s.undo_path.write_bytes(undo)  # as if the unlink had not reached the disk
    ss.close()
    ss2 = StoreSet.open(tmp_path, "svc")
    assert ss2.stores[KEY].records.tobytes() == after
    s2 = ss2.stores[KEY]
    s2.write(10, recs(10, 5, 2))
    ss2.close()
    raw = s2.undo_path.read_bytes()
    s2.undo_path.write_bytes(raw[:-7])  # torn while being saved: nothing was changed yet
    os.truncate(s2.path, HEADER_SIZE + 100 * 64)
    patch(s2.path, HEADER_SIZE + 10 * 64, after[10 * 64 : 100 * 64])
    assert reopened(tmp_path) == after


def test_header_golden_layout(tmp_path: Path) -> None:
    """Every header field at the byte offset FORMAT.md §1.1 draws."""
    ss, s = new_set(tmp_path, committed=3)
    s.write(1, recs(1, 2, 1))  # a rewrite of committed records: seq odd, then even
    ss.commit()
    raw = s.path.read_bytes()[:HEADER_SIZE]
    assert raw[0:8] == b"BARSTRM\x00"
    assert struct.unpack_from("<IIII", raw, 8) == (1, 4096, 64, 1)
    assert abs(struct.unpack_from("<q", raw, 24)[0] - time.time() * 1000) < 60_000
    assert raw[32:48] == s.store_id
    assert raw[48:80].rstrip(b"\x00") == b"EUR-USD"
    assert raw[80:88].rstrip(b"\x00") == b"BID"
    assert raw[88:104].rstrip(b"\x00") == b"1m"
    assert raw[104:168].rstrip(b"\x00") == b"utc"
    assert struct.unpack_from("<I", raw, 168)[0] == zlib.crc32(raw[:168])
    assert raw[172:192] == bytes(20)
    assert struct.unpack_from("<qQQ", raw, 192) == (3, 1, 2)  # length, generation, seq (even)
    assert raw[216:] == bytes(HEADER_SIZE - 216)
    ss.close()
