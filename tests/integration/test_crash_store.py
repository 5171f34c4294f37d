"""Kill -9 a writer at random moments; the reopened store must equal exactly the content of
one commit at or after the last acknowledged one — never garbage, never a partial record.

The child (tests/support/crash_writer.py) follows the deterministic plan of
tests/support/plan.py (random batch sizes, provisional rewrites, deep revisions,
truncations), so the parent recomputes the expected bytes of every commit.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from barstream.shared.store import Store
from barstream.shared.storeset import StoreSet
from tests.conftest import REPO
from tests.support.plan import Model
from tests.support.wait import wait_for

KILLS = int(os.environ.get("BARSTREAM_CRASH_KILLS", "50"))


class Child:
    def __init__(self, root: Path, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.crash_writer", str(root), str(seed)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""
        self.acked = -1
        self.ready = -1

    def pump(self, timeout_s: float) -> None:
        """Read whatever the child printed within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self._fd], [], [], max(left, 0))
            if not r:
                return
            chunk = os.read(self._fd, 65536)
            if not chunk:
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for line in lines:
                word, num = line.split()
                if word == b"ready":
                    self.ready = int(num)
                else:
                    self.acked = int(num)
            if left <= 0:
                return

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        def ready() -> bool:
            if self.ready >= 0:
                return True
            assert self.proc.poll() is None, f"crash writer exited with {self.proc.returncode}"
            self.pump(0.05)  # the poll interval: a select on the child's output
            return self.ready >= 0

        wait_for(ready, timeout_s, what="the crash writer to start", every_s=0)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.pump(0)  # acks printed before death still count
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def run_crashes(tmp_path: Path, seed: int, kills: int) -> None:
    rng = random.Random(seed)
    root = tmp_path / "crash"
    model = Model()
    expected = [b""]  # content after commit c
    last_acked = 0
    key = "EUR-USD/BID/1m"
    for kill in range(kills):
        where = f"seed {seed}, kill {kill}"
        child = Child(root, seed)
        try:
            child.wait_ready()
            assert child.ready >= last_acked, f"{where}: checkpoint went back"
            # Kill at a random moment: right away, after some commits, or mid-stream.
            child.pump(rng.choice([0.0, 0.002, 0.01, 0.03, 0.06]) * rng.random() * 2)
        finally:
            child.kill()
        last_acked = max(last_acked, child.acked)
        # A reader opened before any writer recovers sees a committed prefix.
        reader_path = root / "EUR-USD" / "BID" / "1m.bars"
        reader_seen = None
        if reader_path.exists():
            try:
                reader = Store.open(reader_path, writable=False)
            except Exception as e:  # the file may not be named by any commit yet
                reader = None
                assert last_acked == 0, f"{where}: reader cannot open: {e}"
            if reader is not None:
                reader_seen = reader.snapshot().tobytes()
                reader.close()
        stores = StoreSet.open(root, "crash")
        try:
            k = stores.commits
            assert last_acked <= k <= last_acked + 1, (
                f"{where}: store is at commit {k}, last acknowledged {last_acked}"
            )
            while len(expected) <= k:
                model.step(seed, len(expected))
                expected.append(model.records.tobytes())
            store = stores.get(key)
            got = store.records.tobytes() if store is not None else b""
            if got != expected[k]:
                n = min(len(got), len(expected[k])) // 64
                first = next(
                    (
                        i
                        for i in range(n)
                        if got[i * 64 : i * 64 + 64] != expected[k][i * 64 : i * 64 + 64]
                    ),
                    n,
                )
                pytest.fail(
                    f"{where}: store differs from commit {k}: {len(got) // 64} records, "
                    f"expected {len(expected[k]) // 64}, first difference at record {first}"
                )
            if reader_seen is not None:
                assert expected[k].startswith(reader_seen) or any(
                    e.startswith(reader_seen) for e in expected[max(0, k - 1) : k + 1]
                ), (
                    f"{where}: reader snapshot of {len(reader_seen) // 64} records is no committed prefix"
                )
            assert not list(root.rglob("*.undo")), f"{where}: undo file left after recovery"
            last_acked = k
        finally:
            stores.close()


@pytest.mark.timeout(120)  # ~20 s for the 50 kills
def test_kill_9_writer_store_equals_a_commit(tmp_path: Path) -> None:
    seed = int(os.environ.get("BARSTREAM_SEED", random.randrange(1 << 30)))
    print(f"crash test seed {seed} (BARSTREAM_SEED={seed} to replay)")
    run_crashes(tmp_path, seed, KILLS)


@pytest.mark.slow
@pytest.mark.timeout(300)  # 400 kills, ~8x the 50 above
def test_kill_9_writer_many(tmp_path: Path) -> None:
    seed = int(os.environ.get("BARSTREAM_SEED", random.randrange(1 << 30)))
    print(f"crash test seed {seed} (BARSTREAM_SEED={seed} to replay)")
    run_crashes(tmp_path, seed, 400)
