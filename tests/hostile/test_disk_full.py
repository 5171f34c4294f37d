"""Disk faults on a real, small tmpfs the test mounts (root only; skipped, saying why, where
it cannot mount; always unmounted): the disk fills during a live pipeline's commits and
during a rebuild. A service meeting the full disk stops with one line naming the file, the
bytes it needed and the bytes free (``DiskFull``); nothing committed is lost (every
committed store is a prefix of the reference run, every service reopens its stores); and
once the tmpfs is grown (``mount -o remount,size=…``) the restarted services finish, every
store byte-identical to a run that never saw a full disk. A failed commit is never retried
in place (DESIGN §6): the next commit of that StoreSet refuses, even with space free again.
No fault is injected by a mock: the ENOSPC is the kernel's."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from barstream.shared.checkpoint import Checkpoint
from barstream.shared.errors import EXIT_ERROR, EXIT_OK, CommitFailed, DiskFull
from barstream.shared.header import StoreMeta
from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet
from tests.support.ops import cli
from tests.support.pipeline import pipeline
from tests.support.plan import make_records

SERVICES = ("downloader", "transformer", "aggregator", "resampler", "gateway")
START = dt.date(2026, 1, 5)
END = dt.date(2026, 1, 9)
FULL = re.compile(r"disk full: .* needs ([\d,]+) bytes, ([\d,]+) bytes free")


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on a fresh directory; unmounted (and removed) after."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (running as uid {os.geteuid()})")
    mnt = Path(tempfile.mkdtemp(prefix="bs-full-", dir="/tmp"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        # A failed test may leave a file open on it: then detach it lazily (-l), so that no
        # mount outlives the test whatever happened.
        if subprocess.run(["umount", str(mnt)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def grow(mnt: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)


def store_files(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for s in SERVICES
        if (root / s).is_dir()
        for p in sorted((root / s).rglob("*.bars"))
    }


def records(path: Path) -> np.ndarray:
    with Store.open(path, writable=False) as s:
        return s.snapshot()


def assert_equal_stores(got: Path, want: Path, *, skip: tuple[str, ...] = ()) -> None:
    want_files = {k: v for k, v in store_files(want).items() if not k.startswith(skip)}
    got_files = {k: v for k, v in store_files(got).items() if not k.startswith(skip)}
    assert sorted(got_files) == sorted(want_files)
    for key, path in want_files.items():
        assert records(got_files[key]).tobytes() == records(path).tobytes(), key


@pytest.fixture(scope="module")
def reference() -> Iterator[Path]:
    """The stores of the same run on a disk with room: what every run must end as."""
    with (
        tempfile.TemporaryDirectory(prefix="bs-ref-") as tmp,
        tempfile.TemporaryDirectory(prefix="bs-", dir="/tmp") as ipc,
    ):
        with pipeline(
            Path(tmp), Path(ipc), symbols=["EUR-USD"], sides=["BID"], start_date=START, end_date=END
        ) as p:
            p.write_config()
            p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
            for name in SERVICES:
                p.start(name, "--drain")
            for name in SERVICES:
                assert p.wait(name, 120) == 0, p.log_tail(name)
        yield Path(tmp) / "data"


def test_failed_commit_is_never_retried_in_place(tmp_path: Path) -> None:
    with tmpfs("1m") as mnt:
        ss = StoreSet.open(mnt / "aggregator", "aggregator")
        store = ss.ensure(StoreMeta("EUR-USD", "BID", "1m"))
        store.append(make_records(1, 0, 0, 0, 100))
        ss.commit()
        before = Checkpoint(mnt / "aggregator" / "checkpoint.json").load()
        store.append(make_records(1, 100, 0, 100, 100))  # into preallocated space
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with contextlib.suppress(OSError):
                while True:  # take every byte left
                    os.write(fd, b"\1" * 4096)
        finally:
            os.close(fd)
        with pytest.raises(DiskFull) as e:
            ss.commit()
        assert "checkpoint.json" in e.value.path and e.value.need_bytes > 0
        assert FULL.search(str(e.value)), str(e.value)
        filler.unlink()  # room again: still no second try of that commit's flush
        with pytest.raises(CommitFailed, match="not retried in place"):
            ss.commit()
        assert Checkpoint(mnt / "aggregator" / "checkpoint.json").load() == before
        ss.close()
        again = StoreSet.open(mnt / "aggregator", "aggregator")  # the restart
        assert again.stores["EUR-USD/BID/1m"].committed_length == 100
        again.close()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_disk_full_during_commits_then_resume(reference: Path, tmp_path: Path) -> None:
    with (
        tmpfs("1200k") as mnt,
        tempfile.TemporaryDirectory(prefix="bs-", dir="/tmp") as ipc,
        pipeline(
            tmp_path, Path(ipc), symbols=["EUR-USD"], sides=["BID"], start_date=START, end_date=END
        ) as p,
    ):
        # Configuration and logs beside the test; only the data directory on the tmpfs.
        config = p.write_config()
        data = mnt / "data"
        config.write_text(config.read_text().replace(str(tmp_path / "data"), str(data)))
        p.start_fake("--start", "2026-02-01T00:00:00", "--speed", "1")
        for name in SERVICES:
            p.start(name, "--drain")
        # Some service meets the full disk and stops; the others then wait for it.
        failed: dict[str, str] = {}
        deadline = 120
        from tests.support.wait import wait_for

        def someone_failed() -> bool:
            for name in SERVICES:
                proc = p.procs[name]
                if proc.poll() is not None and proc.returncode != EXIT_OK:
                    failed[name] = p.log_tail(name, 200)
            return bool(failed)

        wait_for(someone_failed, deadline, what="a service stopped by the full disk")
        for name in SERVICES:
            p.kill(name, 15)  # SIGTERM: a clean stop (its close may meet the full disk too)
            p.wait(name, 30)
        for name, log in failed.items():
            assert p.procs[name].returncode == EXIT_ERROR, (name, log)
            line = next(ln for ln in log.splitlines() if "disk full" in ln)
            m = FULL.search(line)
            assert m and str(mnt) in line, line  # the file, the bytes needed and free
            assert "Traceback" not in log
            print(f"{name}: {line}")
        # Nothing committed is lost: every service reopens, its stores a prefix of the
        # reference's (the checkpoint is the truth: a half-written tail is dropped).
        for name in SERVICES:
            if (data / name).is_dir():
                StoreSet.open(data / name, name).close()
        ref = store_files(reference)
        for key, path in store_files(data).items():
            got = records(path)
            want = records(ref[key])[: len(got)]
            if key.startswith("downloader"):  # fetch times and attempts differ run to run
                for name in ("ts_ms", "digest", "kind", "body_len", "version"):
                    assert (got[name] == want[name]).all(), (key, name)
            else:
                assert got.tobytes() == want.tobytes(), key
        # Room again: restarted, every service finishes and the stores equal the reference.
        grow(mnt, "64m")
        for name in SERVICES:
            p.start(name, "--drain")
        for name in SERVICES:
            assert p.wait(name, 120) == 0, p.log_tail(name)
        assert_equal_stores(data, reference, skip=("downloader",))
        code = cli("verify", "-c", str(config), "-q")
        assert code.returncode == 0, code.stdout + code.stderr


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_disk_full_during_rebuild_then_resume(reference: Path, tmp_path: Path) -> None:
    with tmpfs("700k") as mnt:
        data = mnt / "data"
        data.mkdir()
        shutil.copytree(reference / "raw", data / "raw")
        config = mnt / "barstream.toml"
        text = (reference.parent / "barstream.toml").read_text()
        config.write_text(text.replace(str(reference), str(data)))
        var = ["--var", str(tmp_path / "var")]
        first = cli("rebuild", "-c", str(config), "-q", *var, timeout_s=300)
        assert first.returncode == EXIT_ERROR, first.stdout + first.stderr
        err = first.stderr
        assert "rebuild failed:" in err and "disk full" in err, err
        m = FULL.search(err)
        assert m and str(data) in err, err  # the file, what it needed, what was free
        print(err.strip().splitlines()[-1])
        grow(mnt, "64m")
        again = cli("rebuild", "-c", str(config), "-q", *var, timeout_s=300)
        assert again.returncode == EXIT_OK, again.stdout + again.stderr
        assert_equal_stores(data, reference, skip=("downloader",))
        code = cli("verify", "-c", str(config), "-q")
        assert code.returncode == 0, code.stdout + code.stderr
