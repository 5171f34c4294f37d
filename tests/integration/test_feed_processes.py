"""Feeds between real processes over ipc://, with kill -9 and restarts on both sides.

The upstream (tests/support/feed_node.py up) follows the deterministic plan of
tests/support/plan.py — appends, provisional rewrites of its tail, deeper revisions — and
serves its store; the downstream replicates it into its own StoreSet. Whatever is killed,
in whatever order things restart, the downstream ends byte-for-byte equal to the upstream,
and the upstream equals the plan's content.
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
from tests.conftest import REPO
from tests.support.plan import contents
from tests.support.wait import wait_for

KEY_PATH = Path("EUR-USD") / "BID" / "1m.bars"


class Node:
    """One feed_node child; ``pump`` reads what it printed, without blocking."""

    def __init__(self, role: str, *args: str) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.feed_node", role, *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._buf = b""
        self.lines: list[str] = []
        self.acked = 0
        self.done = -1
        self.offset = -1  # downstream: upstream offset at its last commit
        self.commits = 0
        self.caught_up = -1

    def pump(self, timeout_s: float = 0.0) -> None:
        r, _, _ = select.select([self._fd], [], [], timeout_s)
        if not r:
            return
        try:
            chunk = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for raw in lines:
            line = raw.decode()
            self.lines.append(line)
            word, _, rest = line.partition(" ")
            if word == "ack":
                self.acked = int(rest)
            elif word == "done":
                self.done = int(rest)
            elif word == "commit":
                self.offset = int(rest)
                self.commits += 1
            elif word == "caught-up":
                self.caught_up = int(rest)

    def wait_for(self, cond, what: str, timeout_s: float, where: str) -> None:
        """Until ``cond()``, reading what the node prints meanwhile; fails early if it exits."""

        def ready() -> bool:
            if cond():
                return True
            if self.proc.poll() is not None:
                self.pump()
                if cond():
                    return True
                pytest.fail(
                    f"{where}: {self.role} exited with {self.proc.returncode} "
                    f"waiting for {what}\n{self.stderr()}"
                )
            self.pump(0.05)  # the poll interval: a select on the node's output
            return bool(cond())

        wait_for(
            ready,
            timeout_s,
            what=f"{where}: {self.role}: {what}",
            every_s=0,
            on_timeout=self.stderr,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.pump()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-3000:]

    def close(self) -> None:
        self.kill()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def read_store(root: Path) -> bytes:
    store = Store.open(root / KEY_PATH, writable=False)
    try:
        return store.snapshot().tobytes()
    finally:
        store.close()


def chaos(tmp_path: Path, ipc_dir: Path, seed: int, cycles: int) -> None:
    rng = random.Random(seed)
    endpoint = f"ipc://{ipc_dir}/up.feed"
    commits = cycles * 5 + 20
    up_args = [str(tmp_path / "up"), endpoint, str(seed), str(commits), "8"]
    down_args = [str(tmp_path / "down"), endpoint]
    nodes: dict[str, Node] = {}

    def start(role: str) -> None:
        nodes[role] = Node(role, *(up_args if role == "up" else down_args))

    try:
        start("up")
        start("down")
        for cycle in range(cycles):
            where = f"seed {seed}, cycle {cycle}"
            up, down = nodes["up"], nodes["down"]
            want_acks = up.acked + rng.randint(1, 6)
            up.wait_for(
                lambda up=up, n=want_acks: up.acked >= n or up.done >= 0, "commits", 30, where
            )
            if rng.random() < 0.7:  # usually let the downstream make progress first
                seen = down.commits
                down.wait_for(
                    lambda down=down, up=up, s=seen: (
                        down.commits > s or (up.done >= 0 and down.offset == up.done)
                    ),
                    "a downstream commit",
                    30,
                    where,
                )
            victims = rng.choice([["up"], ["down"], ["up", "down"], ["down", "up"]])
            for role in victims:
                nodes[role].kill()
                nodes[role].close()
                if rng.random() < 0.3:
                    time.sleep(rng.random() * 0.02)  # not a wait: a random moment between kills
            for role in victims if rng.random() < 0.5 else victims[::-1]:
                start(role)
        where = f"seed {seed}, final"
        up = nodes["up"]
        up.wait_for(lambda: up.done >= 0, "the upstream to finish", 60, where)
        nodes["down"].kill()
        nodes["down"].close()
        drain = Node("down", *down_args, "--drain")
        nodes["down"] = drain
        drain.wait_for(lambda: drain.proc.poll() is not None, "drain mode to finish", 60, where)
        drain.pump()
        assert drain.proc.returncode == 0, f"{where}: drain exited {drain.proc.returncode}"
        assert drain.caught_up == up.done, (
            f"{where}: drained to {drain.caught_up}, upstream {up.done}"
        )
        upstream = read_store(tmp_path / "up")
        downstream = read_store(tmp_path / "down")
        expected = contents(seed, commits, max_batch=400)[commits]
        assert upstream == expected, f"{where}: upstream store differs from the plan"
        assert len(downstream) == len(upstream), (
            f"{where}: downstream has {len(downstream) // 64} records, upstream {len(upstream) // 64}"
        )
        assert downstream == upstream, f"{where}: downstream copy differs from the upstream"
        assert up.stop() == 0
    finally:
        for node in nodes.values():
            node.close()


def test_kill_9_and_restart_both_sides_downstream_ends_equal(tmp_path: Path, ipc_dir: Path) -> None:
    seed = int(os.environ.get("BARSTREAM_SEED", random.randrange(1 << 30)))
    print(f"feed chaos seed {seed} (BARSTREAM_SEED={seed} to replay)")
    chaos(tmp_path, ipc_dir, seed, cycles=12)


@pytest.mark.slow
@pytest.mark.timeout(300)  # 80 cycles, ~7x the 12 above
def test_kill_9_and_restart_many(tmp_path: Path, ipc_dir: Path) -> None:
    seed = int(os.environ.get("BARSTREAM_SEED", random.randrange(1 << 30)))
    print(f"feed chaos seed {seed} (BARSTREAM_SEED={seed} to replay)")
    chaos(tmp_path, ipc_dir, seed, cycles=80)


def test_slow_downstream_flow_control_never_drops(tmp_path: Path, ipc_dir: Path) -> None:
    """A downstream that takes 30 ms per batch and grants 2 batches of credit: the upstream
    writes everything long before the downstream has it (its store is the buffer), waits
    instead of dropping, and the copy ends equal."""
    seed = int(os.environ.get("BARSTREAM_SEED", random.randrange(1 << 30)))
    where = f"seed {seed}"
    endpoint = f"ipc://{ipc_dir}/up.feed"
    commits = 120
    up = Node("up", str(tmp_path / "up"), endpoint, str(seed), str(commits), "0")
    down = Node("down", str(tmp_path / "down"), endpoint, "--slow-ms", "30", "--credit", "2")
    try:
        up.wait_for(lambda: up.done >= 0, "the upstream to finish", 60, where)
        behind = down.offset != up.done or read_store(tmp_path / "down") != read_store(
            tmp_path / "up"
        )
        assert behind, f"{where}: downstream already caught up: flow control not exercised"
        down.wait_for(
            lambda: (
                down.offset == up.done
                and read_store(tmp_path / "down") == read_store(tmp_path / "up")
            ),
            "the downstream to catch up",
            60,
            where,
        )
        assert down.stop() == 0 and up.stop() == 0
    finally:
        up.close()
        down.close()
