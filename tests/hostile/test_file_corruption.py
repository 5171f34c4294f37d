"""Every file a service reads at start, damaged: truncated, bytes flipped (seeded, many
positions: header fields, checksums, zero areas, record bodies), deleted while running.

A real drain pipeline (downloader … gateway over ipc, the fake upstream) builds a pristine
data directory once. Each case copies it, damages one file, then does what an operator's
machine would: the service starts (``StoreSet.open``, exactly its start path) and, if that
succeeds, ``barstream verify`` runs. The damage must be found by one of them — at start as
an own-file error (exit 3, "needs an operator") naming the file and the byte or record, or
by verify as a ``FAULT <file>: record N`` line followed by the repair command — and never
silently accepted. The only exceptions are the header's advisory words (length, generation,
seq: the writer rewrites them from the checkpoint at start, FORMAT.md §6), checked to be
repaired. The restart-loop side (supervisord, restart counts) is tests/hostile/
test_needs_operator.py. Seeded from BARSTREAM_TEST_SEED when set; the seed is printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from barstream import cli
from barstream.shared.checkpoint import Checkpoint
from barstream.shared.errors import (
    EXIT_NEEDS_OPERATOR,
    BarstreamError,
    StoreFileMissing,
    own_file_damage,
)
from barstream.shared.header import CRC_AT, GENERATION_AT, HEADER_SIZE, LENGTH_AT, SEQ_AT
from barstream.shared.record import RECORD_SIZE
from barstream.shared.storeset import StoreSet
from tests.support.pipeline import REPO, pipeline

SEED = int(os.environ.get("BARSTREAM_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print(f"test_file_corruption: seed {SEED} (BARSTREAM_TEST_SEED={SEED} repeats it)")

SERVICES = ("downloader", "transformer", "aggregator", "resampler", "gateway")
START = dt.date(2026, 1, 5)
END = dt.date(2026, 1, 9)


@dataclass
class Data:
    root: Path  # the pristine data directory
    config: Path


@pytest.fixture(scope="module")
def pristine() -> Iterator[Data]:
    with (
        tempfile.TemporaryDirectory(prefix="bs-fc-") as tmp,
        tempfile.TemporaryDirectory(prefix="bs-", dir="/tmp") as ipc,
        pipeline(
            Path(tmp), Path(ipc), symbols=["EUR-USD"], sides=["BID"], start_date=START, end_date=END
        ) as p,
    ):
        p.timeframes = ["5m", "1h", "1d"]
        p.write_config()
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        for name in SERVICES:
            p.start(name, "--drain")
        for name in SERVICES:
            rc = p.wait(name, 120)
            assert rc == 0, f"{name} exited {rc}:\n{p.log_tail(name)}"
        yield Data(p.root / "data", p.config_path)


def run_verify(root: Path) -> tuple[int, str]:
    """``barstream verify -c CONFIG`` of the data directory ``root`` (its configuration,
    pointing at it, beside it), in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["verify", "-c", str(root.parent / "barstream.toml"), "-q"])
    return code, out.getvalue() + err.getvalue()


def start(root: Path, service: str) -> BarstreamError | None:
    """The service's start path on its own files: the own-file error it stops with."""
    try:
        StoreSet.open(root / service, service).close()
    except BarstreamError as e:
        return e
    return None


def found(root: Path, damaged: Path, *, names: Path | None = None, at: object = None) -> str:
    """How the damage to ``damaged`` (a copy under ``root``) was found: "start: …" or
    "verify: …"; fails the test when neither finds it. ``names``: the file the report
    must name (default the damaged one; a raw body is reported on its journal)."""
    rel = damaged.relative_to(root)
    service = rel.parts[0]
    must = str(names or damaged)
    if service in SERVICES:
        e = start(root, service)
        if e is not None:
            assert own_file_damage(e), f"{rel}: a start error that is no own-file damage: {e!r}"
            text = str(e)
            assert must in text, f"{rel}: the start error does not name the file: {text}"
            assert "byte" in text or "record" in text or "`$" in text, f"{rel}: no offset: {text}"
            return f"start: {text}"
    code, out = run_verify(root)
    faults = [ln for ln in out.splitlines() if ln.startswith("FAULT ") and must in ln]
    assert code == 1 and faults, f"{rel} ({at}): damage silently accepted (seed {SEED}):\n{out}"
    assert any(": record " in ln or "byte" in ln for ln in faults), f"{rel}: no offset: {faults}"
    assert "verify: repair:" in out and "barstream rebuild" in out, out
    return f"verify: {faults[0]}"


@pytest.fixture
def case(pristine: Data) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bs-fc-case-") as d:
        yield Path(d)


def copy(pristine: Data, case: Path) -> Path:
    root = case / "data"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(pristine.root, root, symlinks=True)
    text = pristine.config.read_text().replace(str(pristine.root), str(root))
    (case / "barstream.toml").write_text(text)
    return root


def store_files(root: Path) -> list[Path]:
    return sorted(p for s in SERVICES for p in (root / s).rglob("*.bars"))


def flip(path: Path, at: int, rng: random.Random) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(raw))


# -- the pristine directory is clean, and every store is compared -------------------------


def test_pristine_data_verifies_clean_and_every_store_is_recomputed(pristine: Data) -> None:
    from barstream.recompute import recompute

    code, out = run_verify(pristine.root)
    assert code == 0, out
    again = recompute(pristine.root)
    assert not again.faults and not again.skipped, (again.faults, again.skipped)
    # every store file once: the journal, days, 1m, the resampler's and the gateway's
    assert again.compared == len(store_files(pristine.root)) >= 9, again.compared
    for service in SERVICES:
        assert start(pristine.root, service) is None, service


# -- byte flips ----------------------------------------------------------------------------


def header_positions(rng: random.Random) -> list[int]:
    fixed = rng.sample(range(0, CRC_AT), 10)  # magic … alignment, under the CRC
    crc = [CRC_AT + rng.randrange(4)]
    zeros = [rng.randrange(CRC_AT + 4, LENGTH_AT), rng.randrange(SEQ_AT + 8, HEADER_SIZE)]
    return fixed + crc + zeros


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_flipped_store_bytes_are_found(pristine: Data, case: Path) -> None:
    rng = random.Random(SEED)
    seen: dict[str, int] = {"start": 0, "verify": 0}
    for rel in [p.relative_to(pristine.root) for p in store_files(pristine.root)]:
        size = (pristine.root / rel).stat().st_size
        n = (size - HEADER_SIZE) // RECORD_SIZE
        positions = header_positions(rng)
        if n:
            positions += [
                HEADER_SIZE + rng.randrange(n) * RECORD_SIZE + rng.randrange(RECORD_SIZE)
                for _ in range(12)
            ]
        for at in positions:
            root = copy(pristine, case)
            flip(root / rel, at, rng)
            how = found(root, root / rel, at=f"byte {at}")
            seen[how.split(":")[0]] += 1
    assert seen["start"] and seen["verify"], seen


def test_flipped_record_bytes_sample(pristine: Data, case: Path) -> None:
    """A fast sample of the above for every run: one flip in each byte of the record layout
    of the aggregator's 1m store (prices, volume, src fields, flags …)."""
    rng = random.Random(SEED)
    rel = Path("aggregator/EUR-USD/BID/1m.bars")
    n = ((pristine.root / rel).stat().st_size - HEADER_SIZE) // RECORD_SIZE
    for byte in rng.sample(range(RECORD_SIZE), 8):
        root = copy(pristine, case)
        flip(root / rel, HEADER_SIZE + rng.randrange(n) * RECORD_SIZE + byte, rng)
        assert found(root, root / rel).startswith("verify:")


@pytest.mark.parametrize("at", [LENGTH_AT, LENGTH_AT + 5, GENERATION_AT, SEQ_AT])
def test_advisory_header_words_are_rewritten_at_start(pristine: Data, case: Path, at: int) -> None:
    root = copy(pristine, case)
    rel = Path("resampler/EUR-USD/BID/1h.bars")
    flip(root / rel, at, random.Random(SEED))
    assert start(root, "resampler") is None  # the writer republishes from its checkpoint
    got = (root / rel).read_bytes()[:HEADER_SIZE]
    want = (pristine.root / rel).read_bytes()[:HEADER_SIZE]
    # seq is a counter readers only compare with itself: any even value is a valid one
    assert got[:SEQ_AT] == want[:SEQ_AT] and got[SEQ_AT + 8 :] == want[SEQ_AT + 8 :]
    assert int.from_bytes(got[SEQ_AT : SEQ_AT + 8], "little") % 2 == 0
    assert run_verify(root)[0] == 0


@pytest.mark.parametrize("service", SERVICES)
def test_flipped_checkpoint_bytes_are_found_at_start(
    pristine: Data, case: Path, service: str
) -> None:
    rng = random.Random(f"{SEED}-{service}")
    size = (pristine.root / service / "checkpoint.json").stat().st_size
    for at in rng.sample(range(size), 15):
        root = copy(pristine, case)
        ck = root / service / "checkpoint.json"
        flip(ck, at, rng)
        assert found(root, ck).startswith("start:"), at


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_flipped_raw_cache_bytes_are_found_by_verify(pristine: Data, case: Path) -> None:
    rng = random.Random(SEED)
    journal = pristine.root / "downloader" / "EUR-USD" / "BID" / "fetch.bars"
    raws = sorted((pristine.root / "raw").rglob("*.json"))
    assert len(raws) == (END - START).days + 1
    for rel in [p.relative_to(pristine.root) for p in rng.sample(raws, 3)]:
        for at in rng.sample(range((pristine.root / rel).stat().st_size), 3):
            root = copy(pristine, case)
            flip(root / rel, at, rng)
            how = found(root, root / rel, names=root / journal.relative_to(pristine.root))
            assert "--refetch" in how, how


# -- truncation -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_truncated_files_are_found(pristine: Data, case: Path, service: str) -> None:
    rng = random.Random(f"{SEED}-t-{service}")
    files = [
        p for p in store_files(pristine.root) if p.relative_to(pristine.root).parts[0] == service
    ]
    files.append(pristine.root / service / "checkpoint.json")
    for src in files:
        rel = src.relative_to(pristine.root)
        size = src.stat().st_size
        cuts = [0, rng.randrange(1, min(size, HEADER_SIZE))]
        if size > HEADER_SIZE + RECORD_SIZE:
            cuts.append(rng.randrange(HEADER_SIZE, size - 1))
        for cut in cuts:
            root = copy(pristine, case)
            os.truncate(root / rel, cut)
            found(root, root / rel)


def test_truncated_raw_body_is_found(pristine: Data, case: Path) -> None:
    root = copy(pristine, case)
    raw = sorted((root / "raw").rglob("*.json"))[2]
    os.truncate(raw, raw.stat().st_size // 2)
    found(root, raw, names=root / "downloader" / "EUR-USD" / "BID" / "fetch.bars")


# -- the undo file --------------------------------------------------------------------------


def crashed_rewrite(root: Path) -> tuple[Path, Path]:
    """Leave the aggregator as a crash mid-rewrite does: committed records overwritten on
    disk, their old bytes in the undo file, no commit. Returns (store, undo file)."""
    ss = StoreSet.open(root / "aggregator", "aggregator")
    store = ss.stores["EUR-USD/BID/1m"]
    n = store.committed_length
    changed = store.snapshot(n - 50, n)
    changed["close"] = changed["low"]  # still a valid bar: only the comparison can tell
    store.write(n - 50, changed)
    store.flush()
    path, undo = store.path, store.undo_path
    ss.close()  # no commit: the undo file stays, as after kill -9
    assert undo.exists()
    return path, undo


def test_intact_undo_file_restores_the_committed_records(pristine: Data, case: Path) -> None:
    root = copy(pristine, case)
    path, _ = crashed_rewrite(root)
    assert start(root, "aggregator") is None
    got, want = path.read_bytes(), (pristine.root / path.relative_to(root)).read_bytes()
    assert got[:SEQ_AT] == want[:SEQ_AT] and got[SEQ_AT + 8 :] == want[SEQ_AT + 8 :]
    assert run_verify(root)[0] == 0


def test_damaged_undo_file_is_found(pristine: Data, case: Path) -> None:
    from barstream.shared.undo import UNDO_ENTRY, UNDO_HEAD

    rng = random.Random(SEED)
    root = copy(pristine, case)
    _, undo = crashed_rewrite(root)
    size = undo.stat().st_size
    body = UNDO_HEAD.size + UNDO_ENTRY.size
    positions = [0, 3, 9, 20, 28, 36, UNDO_HEAD.size + 2, UNDO_HEAD.size + 9, UNDO_HEAD.size + 17]
    positions += rng.sample(range(body, size), 6)
    cuts = [UNDO_HEAD.size + 4, body + 64, size - 1]
    for at in positions + [-c for c in cuts]:
        root = copy(pristine, case)
        store, undo = crashed_rewrite(root)
        if at >= 0:
            flip(undo, at, rng)
        else:
            os.truncate(undo, -at)
        e = start(root, "aggregator")
        if e is not None:
            assert own_file_damage(e) and str(undo) in str(e) and "byte" in str(e), e
            continue
        # Not refused at start (e.g. a flip that makes the head look stale, or a cut that
        # looks like a torn last entry): the records left unrestored are found by verify.
        found(root, store)


# -- deletion while running -----------------------------------------------------------------


@pytest.mark.parametrize(
    "rel",
    [
        "aggregator/EUR-USD/BID/1m.bars",
        "downloader/EUR-USD/BID/fetch.bars",
        "resampler/EUR-USD/BID/1h.bars",
        "gateway/EUR-USD/BID/5m.bars",
        "transformer/EUR-USD/BID/days.bars",
    ],
)
def test_store_deleted_while_running_stops_and_needs_an_operator(
    pristine: Data, case: Path, rel: str
) -> None:
    root = copy(pristine, case)
    service = rel.split("/")[0]
    key = "/".join(rel.split("/")[1:]).removesuffix(".bars")
    ss = StoreSet.open(root / service, service)
    before = Checkpoint(root / service / "checkpoint.json").load()
    try:
        store = ss.stores[key]
        (root / rel).unlink()
        store.append(store.snapshot(store.committed_length - 1, store.committed_length))
        ss.touch(key)
        with pytest.raises(StoreFileMissing, match="deleted while the service had it open"):
            ss.commit()
    finally:
        with contextlib.suppress(BarstreamError, OSError):
            ss.close()
    # Nothing was committed past the deletion, and the restart needs an operator.
    assert Checkpoint(root / service / "checkpoint.json").load() == before
    how = found(root, root / rel)
    assert how.startswith("start:") and "no such store file" in how


def test_checkpoint_deleted_while_running_is_rewritten_by_the_next_commit(
    pristine: Data, case: Path
) -> None:
    root = copy(pristine, case)
    ss = StoreSet.open(root / "resampler", "resampler")
    ck = root / "resampler" / "checkpoint.json"
    before = Checkpoint(ck).load()
    assert before is not None
    ck.unlink()
    ss.state["x"] = 1  # something to commit
    ss.commit()
    ss.close()
    after = Checkpoint(ck).load()
    assert after is not None and after.stores == before.stores
    assert start(root, "resampler") is None and run_verify(root)[0] == 0


def test_raw_body_deleted_while_running_is_found_by_verify(pristine: Data, case: Path) -> None:
    root = copy(pristine, case)
    raw = sorted((root / "raw").rglob("*.json"))[1]
    raw.unlink()
    how = found(root, raw, names=root / "downloader" / "EUR-USD" / "BID" / "fetch.bars")
    assert "missing or damaged" in how and "--refetch" in how


# -- the real processes ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("rel", "at"),
    [
        ("downloader/EUR-USD/BID/fetch.bars", 30),  # journal header: store id
        ("transformer/checkpoint.json", 40),
        ("aggregator/EUR-USD/BID/1m.bars", 4),  # magic
        ("resampler/EUR-USD/BID/1d.bars", 200),  # zero area
        ("gateway/checkpoint.json", 12),
    ],
)
def test_each_service_process_exits_3_naming_the_file(
    pristine: Data, case: Path, rel: str, at: int
) -> None:
    root = copy(pristine, case)
    if rel.endswith(".bars") and at >= LENGTH_AT:
        at = HEADER_SIZE - 100
    flip(root / rel, at, random.Random(SEED))
    config = case / "barstream.toml"
    service = rel.split("/")[0]
    done = subprocess.run(
        [sys.executable, "-m", f"barstream.services.{service}", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_NEEDS_OPERATOR, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "FATAL" in lines[0] and str(root / rel) in lines[0], lines
    assert f"barstream rebuild --config {config}" in lines[0]


def test_seeded_flips_do_not_hide_in_numpy(pristine: Data) -> None:
    """The comparison is byte-wise: a flipped NaN payload or -0.0 is still a difference."""
    from barstream.recompute import first_difference
    from barstream.shared.record import RECORD_DTYPE

    a = np.zeros(3, RECORD_DTYPE)
    b = a.copy()
    b.view(np.uint8)[64 + 39] ^= 0x80  # close of record 1: 0.0 -> -0.0 (== in float)
    fault = first_difference(Path("x.bars"), b, a, "its upstream")
    assert fault is not None and fault.offset == 1 and "close" in fault.what


def test_undo_file_deleted_before_the_restart_is_found_by_verify(
    pristine: Data, case: Path
) -> None:
    """An undo file lost between a crash and the restart: the overwritten committed records
    cannot be restored (nothing at start can know), and verify's recomputation finds them."""
    root = copy(pristine, case)
    store, undo = crashed_rewrite(root)
    undo.unlink()
    assert found(root, store).startswith("verify:")


def test_checkpoint_deleted_at_stop_starts_fresh_and_says_so(
    pristine: Data, case: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No checkpoint is the documented reset (CheckpointCorrupt's hint): the service starts
    fresh and recomputes from upstream — never silently: each store file removed is logged."""
    root = copy(pristine, case)
    (root / "aggregator" / "checkpoint.json").unlink()
    with caplog.at_level("WARNING", logger="barstream.store"):
        ss = StoreSet.open(root / "aggregator", "aggregator")
    assert not ss.stores and not ss.upstream
    ss.close()
    removed = [r.getMessage() for r in caplog.records if "removing" in r.getMessage()]
    assert any("aggregator/EUR-USD/BID/1m.bars" in m for m in removed), removed
