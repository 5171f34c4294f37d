"""A helper process that decodes candle days for the transformer, on the second core.

Decoding is the transformer's work during a catch-up (≈ 0.5 ms per day file, one core).
``DecodeHelper`` starts ``python -m barstream.services.transformer.decode_pool`` (lean: numpy,
msgspec and the decoder only) and hands it part of a batch's days while the transformer
decodes the rest itself; both decode their share with ``decode_days`` (many days at once). Decoding is pure, so the result does not depend on which process
decoded what; the transformer still applies the days strictly in journal order.

Wire (the helper's stdin/stdout pipes; no pickle): a request is ``<QQ`` (header length,
bodies length), a msgpack header ``[symbol, side, capacity, [[day_ms, live, src_offset,
body_len], ...]]`` and the bodies back to back. The helper writes the decoded records back
to back into a shared memory file (memfd, ``capacity`` bytes, grown by the transformer) and
answers ``<Q`` + a msgpack list with each day's record count, or -1 when the day failed to
decode: the transformer decodes that one again itself, which raises the exact error (bad
payloads are rare). When the helper is gone (killed, crashed) the transformer decodes
everything itself; nothing is lost either way.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import struct
import subprocess
import sys
from typing import IO, Final

import msgspec
import numpy as np

from barstream.services.transformer.bulk import decode_days
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE

log = logging.getLogger("barstream.transformer")

_LEN2: Final = struct.Struct("<QQ")
_LEN1: Final = struct.Struct("<Q")
#: Minutes in a day: the most records one day file decodes to (times strictly increase).
MAX_RECORDS_PER_DAY: Final = 1440

Item = tuple[int, bool, int, bytes]  # day_ms, live, src_offset, body


class DecodeHelper:
    """The transformer's side of the helper process (start with ``start()``)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._memfd = -1
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._ready = False
        self._pending: list[int] | None = None  # request in flight: body lengths
        self._failed = False  # once failed, never started again (decode in-process)

    def start(self) -> None:
        """Start the helper (returns at once; ``ready()`` says when it can take work)."""
        if self._proc is not None or self._failed:
            return
        try:
            self._memfd = os.memfd_create("barstream-decode", os.MFD_CLOEXEC)
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "barstream.services.transformer.decode_pool",
                    str(self._memfd),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(self._memfd,),
            )
        except (OSError, AttributeError) as e:  # no memfd_create / cannot spawn
            self._fail(f"could not start: {e}")

    def ready(self) -> bool:
        """Whether the helper has started (it writes one byte once imported)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return False
        if not self._ready:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], 0)
            if readable:
                self._ready = proc.stdout.read(1) == b"R"
                if not self._ready:
                    self._fail("did not start")
        return self._ready

    def submit(self, symbol: str, side: str, items: list[Item]) -> bool:
        """Send ``items`` to decode. False (and nothing sent) when the helper is not usable."""
        if not items or not self.ready() or self._pending is not None:
            return False
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        need = len(items) * MAX_RECORDS_PER_DAY * RECORD_SIZE
        if need > self._capacity:
            self._capacity = max(need, 2 * self._capacity)
            os.ftruncate(self._memfd, self._capacity)
            if self._map is not None:
                with contextlib.suppress(BufferError):
                    self._map.close()
            self._map = mmap.mmap(self._memfd, self._capacity, access=mmap.ACCESS_READ)
        header = msgspec.msgpack.encode(
            [symbol, side, self._capacity, [[d, live, o, len(b)] for d, live, o, b in items]]
        )
        bodies = [b for _, _, _, b in items]
        try:
            _write_all(proc.stdin, [_LEN2.pack(len(header), sum(map(len, bodies))), header])
            _write_all(proc.stdin, bodies)
            proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            self._fail(f"could not send work: {e}")
            return False
        self._pending = [len(b) for b in bodies]
        return True

    def result(self) -> list[np.ndarray | None] | None:
        """The decoded records of the submitted items, in order (None: decode it yourself).
        The arrays are views of shared memory, valid until the next ``submit``. None when
        the helper failed (decode everything yourself)."""
        pending, self._pending = self._pending, None
        proc = self._proc
        if pending is None or proc is None or proc.stdout is None:
            return None
        try:
            (size,) = _LEN1.unpack(_read_exact(proc.stdout, _LEN1.size))
            counts = msgspec.msgpack.decode(_read_exact(proc.stdout, size), type=list[int])
        except (EOFError, OSError, msgspec.DecodeError) as e:
            self._fail(f"no answer: {e}")
            return None
        if len(counts) != len(pending) or sum(max(c, 0) for c in counts) * RECORD_SIZE > (
            self._capacity
        ):
            self._fail(f"bad answer: {len(counts)} counts for {len(pending)} days")
            return None
        assert self._map is not None
        out: list[np.ndarray | None] = []
        pos = 0
        for c in counts:
            if c < 0:
                out.append(None)
                continue
            out.append(np.frombuffer(self._map, dtype=RECORD_DTYPE, count=c, offset=pos))
            pos += c * RECORD_SIZE
        return out

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self._memfd >= 0:
            os.close(self._memfd)
            self._memfd = -1
        self._ready = False

    def _fail(self, why: str) -> None:
        log.warning("decode helper %s; decoding in the transformer from now on", why)
        self._failed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._ready = False
        self._pending = None
        self.close()


def _write_all(stream: IO[bytes], parts: list[bytes]) -> None:
    for part in parts:
        stream.write(part)


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError(f"helper pipe closed ({0 if data is None else len(data)} of {n} bytes)")
    return data


# --- the helper process ------------------------------------------------------------------


class _Request(msgspec.Struct, array_like=True):
    symbol: str
    side: str
    capacity: int
    items: list[tuple[int, bool, int, int]]


def helper_main(memfd: int) -> int:
    """Serve decode requests on stdin/stdout until stdin closes."""
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    decoder = msgspec.msgpack.Decoder(_Request)
    mapped: mmap.mmap | None = None
    capacity = 0
    stdout.write(b"R")
    stdout.flush()
    while True:
        head = stdin.read(_LEN2.size)
        if len(head) < _LEN2.size:
            return 0  # the transformer closed the pipe: done
        header_len, bodies_len = _LEN2.unpack(head)
        req = decoder.decode(_read_exact(stdin, header_len))
        bodies = _read_exact(stdin, bodies_len)
        if req.capacity != capacity:
            if mapped is not None:
                mapped.close()
            capacity = req.capacity
            mapped = mmap.mmap(memfd, capacity, access=mmap.ACCESS_WRITE)
        assert mapped is not None
        counts: list[int] = []
        pos = 0
        at = 0
        bodies_each: list[bytes] = []
        for *_, n in req.items:
            bodies_each.append(bodies[at : at + n])
            at += n
        decoded: list[np.ndarray | Exception]
        try:
            decoded = list(
                decode_days(
                    bodies_each,
                    symbol=req.symbol,
                    side=req.side,
                    day_ms=[d for d, _, _, _ in req.items],
                    live=[lv for _, lv, _, _ in req.items],
                    src_offsets=[o for _, _, o, _ in req.items],
                )
            )
        except Exception as e:  # the transformer decodes them again and reports any error
            decoded = [e] * len(bodies_each)
        for records in decoded:
            if not isinstance(records, np.ndarray):
                counts.append(-1)  # the transformer decodes it again and reports the error
                continue
            size = len(records) * RECORD_SIZE
            if pos + size > capacity:
                counts.append(-1)
                continue
            if size:
                np.frombuffer(mapped, dtype=RECORD_DTYPE, count=len(records), offset=pos)[:] = (
                    records
                )
            pos += size
            counts.append(len(records))
        answer = msgspec.msgpack.encode(counts)
        stdout.write(_LEN1.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    sys.exit(helper_main(int(sys.argv[1])))
