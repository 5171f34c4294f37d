"""Hostile messages for every socket barstream exposes, from a seeded generator.

``Fuzz(seed)`` makes, for each socket kind, one message (its frames) per call, drawn
from: random bytes; wrong frame counts; well-typed headers with absurd values (huge or
negative counts and offsets, past-the-end starts, wrong protocol version, record bytes
not a multiple of 64, generation and store-id mismatches, hostile names); wrong types;
oversized frames. Every call is deterministic given the seed (``BARSTREAM_TEST_SEED``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

import msgspec

from barstream.shared.record import RECORD_SIZE

_enc = msgspec.msgpack.Encoder()

#: Names no receiver should take (shapes and unconfigured names).
HOSTILE_NAMES = [
    "EURUSD",
    "../../1m",
    "EUR-USD/../../1m",
    "/etc/passwd",
    "EUR-USD/BID/1m/x",
    "EUR-USD//1m",
    "EUR-USD/BID\x00/1m",
    "EUR-USD/BID\n2026-01-01 FAKE/1m",
    "X" * 3000 + "/BID/1m",
    "GBP-USD/BID/1m",
    "EUR-USD/ASK/1m",
    "EUR-USD/BID/7m",
    "",
    "é/€/✓",
]
ABSURD_INTS = [
    -1,
    -(2**63),
    2**63 - 1,
    2**64 - 1,
    2**31,
    10**12,
    100_001,
    0,
    1,
    65_537,
]


def seed_from_env(default: int | None = None) -> int:
    """``BARSTREAM_TEST_SEED`` when set, else ``default`` or a fresh one (printed by the
    caller so a failure can be replayed)."""
    text = os.environ.get("BARSTREAM_TEST_SEED", "")
    if text:
        return int(text)
    return default if default is not None else int(time.time_ns() % 2**31)


class Fuzz:
    def __init__(self, seed: int, *, max_oversize: int = 2 << 20) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.max_oversize = max_oversize

    # -- pieces -------------------------------------------------------------------------

    def junk(self, lo: int = 0, hi: int = 300) -> bytes:
        return self.rng.randbytes(self.rng.randint(lo, hi))

    def absurd(self) -> int:
        r = self.rng
        return r.choice(ABSURD_INTS) if r.random() < 0.7 else r.randint(-(2**40), 2**40)

    def name(self) -> str:
        return self.rng.choice(HOSTILE_NAMES)

    def any_value(self) -> object:
        r = self.rng
        return r.choice(
            [None, True, 1.5, -7, "x", b"\x00\xff", [], {}, [1, [2, [3]]], {"a": 1}, self.absurd()]
        )

    def version(self) -> int:
        return self.rng.choice([1, 1, 1, 0, 2, -1, 2**40])

    def mutate(self, msg: dict[str, object]) -> bytes:
        """``msg`` encoded, sometimes with a field of the wrong type, a missing field, a
        wrong version, or its bytes cut short or flipped."""
        r = self.rng
        msg = dict(msg)
        roll = r.random()
        if roll < 0.15 and msg:
            msg[r.choice(list(msg))] = self.any_value()
        elif roll < 0.25 and msg:
            msg.pop(r.choice(list(msg)))
        msg.setdefault("v", self.version())
        raw = _enc.encode(msg)
        roll = r.random()
        if roll < 0.1:
            raw = raw[: r.randint(0, len(raw))]
        elif roll < 0.2 and raw:
            b = bytearray(raw)
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
            raw = bytes(b)
        return raw

    def oversized(self) -> bytes:
        return b"\x00" * self.rng.randint(1 << 20, self.max_oversize)

    def records(self) -> bytes:
        """Record bytes: a multiple of 64 or not, zeros or garbage."""
        r = self.rng
        n = r.choice([0, 1, 3, 64])
        extra = r.choice([0, 0, 1, 63, -1])
        size = max(0, n * RECORD_SIZE + extra)
        return r.randbytes(size) if r.random() < 0.5 else b"\x00" * size

    # -- feed ROUTER (what a DEALER sends an upstream) ------------------------------------

    def feed_up(self) -> list[bytes]:
        r = self.rng
        kind = r.random()
        if kind < 0.15:
            return [self.junk(0, 500)]
        if kind < 0.25:
            return [self.junk() for _ in range(r.randint(2, 6))]
        if kind < 0.27:
            return [self.oversized()]
        if kind < 0.5:
            streams = {
                self.name(): [r.choice(["", "ab" * 16, "zz"]), self.absurd(), self.absurd()]
                for _ in range(r.randint(0, 4))
            }
            hello = {
                "t": "hello",
                "name": r.choice(["fuzz", "\n FAKE LINE", "x" * 2000]),
                "session": self.absurd(),
                "streams": streams,
                "prefixes": [self.name() for _ in range(r.randint(0, 3))],
                # never a valid credit: a fuzzing peer must not be served the store
                "credit": r.choice([-1, 100_001, 2**63 - 1, -(2**63)]),
            }
            return [self.mutate(hello)]
        if kind < 0.8:
            return [self.mutate({"t": "credit", "session": self.absurd(), "n": self.absurd()})]
        if kind < 0.9:
            return [self.mutate({"t": "bye", "session": self.absurd()})]
        return [self.mutate({"t": r.choice(["batch", "hb", "nope", ""]), "x": self.any_value()})]

    # -- a feed follower (what an upstream sends a DEALER) --------------------------------

    def feed_down(self, conn: int, good_stream: str) -> list[bytes]:
        r = self.rng
        kind = r.random()
        if kind < 0.1:
            return [self.junk(0, 500)]
        if kind < 0.15:
            return [self.junk() for _ in range(r.randint(2, 6))]
        if kind < 0.8:
            body = self.records()
            count = r.choice([len(body) // RECORD_SIZE, self.absurd()])
            batch = {
                "t": "batch",
                "session": conn if r.random() < 0.9 else self.absurd(),
                "stream": good_stream if r.random() < 0.5 else self.name(),
                "store_id": r.choice(["ab" * 16, "cd" * 16, "", "not hex"]),
                "generation": r.choice([0, 0, 1, self.absurd()]),
                "start": r.choice([0, 0, 1, self.absurd()]),
                "count": count,
                "end": self.absurd(),
                "kind": r.choice([1, 1, 2, 0, 99]),
                "attachments": r.choice([0, 0, 0, 1, self.absurd()]),
            }
            frames = [self.mutate(batch), body]
            if r.random() < 0.1:
                frames += [self.junk() for _ in range(r.randint(1, 3))]
            return frames
        ends = {self.name(): [self.absurd(), self.absurd()] for _ in range(r.randint(0, 5))}
        return [
            self.mutate({"t": "hb", "instance": "fuzz", "wall_ms": self.absurd(), "ends": ends})
        ]

    # -- gateway ROUTER (requests) ----------------------------------------------------------

    def gw_request(self, topic: str) -> list[bytes]:
        r = self.rng
        kind = r.random()
        if kind < 0.15:
            return [self.junk(0, 500)]
        if kind < 0.25:
            return [self.junk() for _ in range(r.randint(2, 5))]
        if kind < 0.27:
            return [b"\x00" * r.randint(60_000, 70_000)]  # around MAX_REQUEST_BYTES
        t = r.choice(["history", "snapshot", "list", "status", "nope"])
        req: dict[str, object] = {"t": t, "id": self.absurd()}
        if t in ("history", "snapshot"):
            req["topic"] = topic if r.random() < 0.5 else self.name()
        if t == "history":
            for k in ("start_ms", "end_ms", "last"):
                if r.random() < 0.5:
                    req[k] = self.absurd()
        if t == "snapshot":
            req.update(
                last=self.absurd(),
                since_seq=self.absurd(),
                from_offset=self.absurd(),
                epoch=r.choice(["", "ab" * 16, "x"]),
            )
        if t == "list":
            req["prefix"] = self.name()
        return [self.mutate(req)]

    # -- gateway XPUB (what a subscriber's socket sends) ------------------------------------

    def subscription(self) -> bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.3:
            return self.junk(0, 200)
        return bytes([r.choice([0, 1])]) + self.name().encode()


def run_bounded(send: Callable[[], bool], count: int, deadline_s: float) -> int:
    """Call ``send`` up to ``count`` times or until ``deadline_s`` passed; → how many sent."""
    end = time.monotonic() + deadline_s
    sent = 0
    for i in range(count):
        if i % 256 == 0 and time.monotonic() > end:
            break
        sent += bool(send())
    return sent
