"""The transformer's decode helper: a sixth process that decodes part of each large batch.

Decoding is the transformer's work during a catch-up (≈ 0.5 ms per day file, one core).
:class:`DecodeHelper` owns the helper process and the split of the work:
``DecodeHelper.decode(symbol, side, items)`` returns, for each day, its records or its
``PayloadInvalid`` — exactly ``bulk.decode_days`` over ``items`` — whichever process decoded it.

Contract
--------
* Batches of fewer than ``min_days`` days are decoded in the transformer. A larger batch is
  split by body bytes: the transformer decodes the first ``1 - share`` itself while the helper
  decodes the rest; ``share`` adapts after each batch (less when the transformer waited for
  the helper, more when the helper was done first) within [0.1, 0.9].
* Decoding is pure, so the result does not depend on which process decoded what; the caller
  still applies the days strictly in journal order. A day the helper could not decode (count
  -1) is decoded again in the transformer, which gives the exact error.
* The helper starts lazily on the first large batch (``python -m
  barstream.services.transformer.decode_process``: numpy, msgspec and the decoder only) and
  is used once it is ready; until then batches are decoded locally.
* **Bounded waits.** Sending a request and reading its answer each have a deadline of
  ``answer_timeout_s + timeout_per_day_s × days`` (``transformer.decode_helper_timeout_s``
  and ``decode_helper_timeout_per_day_s``; the answer's counted from when the transformer
  has finished its own share). A helper that exits or dies is seen at once (EOF or a broken
  pipe); one that hangs (stopped by SIGSTOP, stuck) when the deadline passes; one that
  answers nonsense at once. Either way the helper is killed, its work is decoded in the
  transformer (nothing is lost, the result is the same), ``on_restart(reason)`` counts it
  (``barstream_decode_helper_restarts_total{reason}``: ``timeout``, ``exited``,
  ``bad_answer``), one warning line is logged, and a new helper is started with the next
  large batch — after ``restart_delay_s``, doubled for each failure in a row up to
  ``RESTART_MAX_S`` (a helper that keeps hanging costs one deadline per delay, not one per
  batch); an answered request resets the delay. Until it is ready, batches are decoded in
  the transformer. A helper that cannot be started at all (no memfd, no interpreter) is
  not tried again: one warning, everything decoded in the transformer.

The helper process and the wire (its stdin/stdout pipes, enlarged to 1 MiB where the OS
allows, and a memfd) are ``decode_process``; docs/PROTOCOL.md draws the frames too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Final

import msgspec
import numpy as np

from barstream.services.transformer.bulk import decode_days
from barstream.services.transformer.decode_process import ANSWER_HEAD, READY, REQUEST_HEAD
from barstream.shared.errors import PayloadInvalid
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE

log = logging.getLogger("barstream.transformer")

#: Minutes in a day: the most records one day file decodes to (times strictly increase).
MAX_RECORDS_PER_DAY: Final = 1440
#: Batches with at least this many days to decode are shared with the helper process.
HELPER_MIN_DAYS: Final = 16
#: The helper's deadline per request: this much, plus TIMEOUT_PER_DAY_S per day sent (the
#: helper decodes a day in ≈ 0.5 ms; the slack covers a loaded machine).
ANSWER_TIMEOUT_S: Final = 2.0
TIMEOUT_PER_DAY_S: Final = 0.005
#: Seconds before a failed helper is started again (doubled per failure in a row, at most
#: RESTART_MAX_S).
RESTART_DELAY_S: Final = 1.0
RESTART_MAX_S: Final = 60.0
_PIPE_BYTES: Final = 1 << 20
_IOV_MAX: Final = 1024

Item = tuple[int, bool, int, bytes]  # day_ms, live, src_offset, body
Decoded = np.ndarray | PayloadInvalid
LocalDecode = Callable[[str, str, list[Item]], list[Decoded]]


def decode_here(symbol: str, side: str, items: list[Item]) -> list[Decoded]:
    """``items`` decoded in this process (``bulk.decode_days``)."""
    return decode_days(
        [body for *_, body in items],
        symbol=symbol,
        side=side,
        day_ms=[day_ms for day_ms, _, _, _ in items],
        live=[live for _, live, _, _ in items],
        src_offsets=[offset for _, _, offset, _ in items],
    )


class DecodeHelper:
    """The helper process and the split of each batch between it and the transformer."""

    def __init__(
        self,
        *,
        min_days: int = HELPER_MIN_DAYS,
        answer_timeout_s: float = ANSWER_TIMEOUT_S,
        timeout_per_day_s: float = TIMEOUT_PER_DAY_S,
        restart_delay_s: float = RESTART_DELAY_S,
        decode_local: LocalDecode = decode_here,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.min_days = min_days
        self.answer_timeout_s = answer_timeout_s
        self.timeout_per_day_s = timeout_per_day_s
        self.restart_delay_s = restart_delay_s
        self.decode_local = decode_local
        self.on_restart = on_restart
        #: Helpers killed for failing (each restarted with a later large batch).
        self.restarts = 0
        self._failures_in_row = 0
        self._start_after = 0.0  # time.monotonic() before which no helper is started
        #: Share of a large batch's body bytes given to the helper (adapted per batch).
        self.share = 0.5
        #: Days the helper answered for (its share of every batch it took).
        self.days = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._memfd = -1
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._ready = False
        self._pending: list[int] | None = None  # request in flight: body lengths
        self._broken = False  # could not be started: never tried again (decode in-process)

    def __repr__(self) -> str:
        state = "broken" if self._broken else "ready" if self._ready else "idle"
        return (
            f"<DecodeHelper {state} days={self.days} share={self.share:.2f} "
            f"restarts={self.restarts}>"
        )

    @property
    def usable(self) -> bool:
        """False once a helper could not be started at all: every batch is then decoded in
        the transformer. (A helper that failed is restarted: still usable.)"""
        return not self._broken

    @property
    def pid(self) -> int | None:
        """The running helper's process id (None: none running)."""
        return self._proc.pid if self._proc is not None else None

    def decode(self, symbol: str, side: str, items: list[Item]) -> list[Decoded]:
        """For each item, its records or its ``PayloadInvalid`` (``bulk.decode_days``),
        shared with the helper when the batch is large and the helper is ready."""
        local = self.decode_local
        if len(items) < self.min_days:
            return local(symbol, side, items)
        self.start()  # once; used as soon as it is ready
        total = sum(len(b) for *_, b in items)
        k, acc = 0, 0
        while k < len(items) and acc < total * (1 - self.share):
            acc += len(items[k][3])
            k += 1
        mine, theirs = items[:k], items[k:]
        if not self.submit(symbol, side, theirs):
            return local(symbol, side, items)
        t0 = time.perf_counter()
        out = local(symbol, side, mine)
        t1 = time.perf_counter()
        got = self.result()
        waited = time.perf_counter() - t1
        # Balance the next batch: give the helper less when we waited for it, more when
        # it was done first (the transformer also writes, serves and commits).
        if waited > max(0.002, 0.05 * (t1 - t0)):
            self.share = max(0.1, self.share - 0.05)
        elif waited < 0.0005:
            self.share = min(0.9, self.share + 0.05)
        if got is None:
            out.extend(local(symbol, side, theirs))
            return out
        self._failures_in_row = 0
        self.days += len(theirs)
        for item, records in zip(theirs, got, strict=True):
            # None: failed there; decode here for the exact error
            out.append(local(symbol, side, [item])[0] if records is None else records)
        return out

    # --- the helper process ---------------------------------------------------------------

    def start(self) -> None:
        """Start the helper (returns at once; ``ready()`` says when it can take work); after
        a failure, not before its restart delay has passed."""
        if self._proc is not None or self._broken or time.monotonic() < self._start_after:
            return
        try:
            self._memfd = os.memfd_create("barstream-decode", os.MFD_CLOEXEC)
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "barstream.services.transformer.decode_process",
                    str(self._memfd),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,  # raw pipes: select() and os.read/os.writev see every byte
                pass_fds=(self._memfd,),
            )
        except (OSError, AttributeError) as e:  # no memfd_create / cannot spawn
            log.warning("decode helper could not start (%s); decoding in the transformer", e)
            self._broken = True
            self.close()
            return
        assert self._proc.stdin is not None and self._proc.stdout is not None
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):  # a smaller pipe only costs more wake-ups
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        os.set_blocking(self._proc.stdin.fileno(), False)  # writes wait in select, bounded

    def ready(self) -> bool:
        """Whether the helper has started (it writes one byte once imported)."""
        proc = self._proc
        if proc is None:
            return False
        if proc.poll() is not None:
            self._fail("exited", f"exited with status {proc.returncode}")
            return False
        if not self._ready:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            readable, _, _ = select.select([fd], [], [], 0)
            if readable:
                self._ready = os.read(fd, len(READY)) == READY
                if not self._ready:
                    self._fail("exited", "did not start")
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
        lengths = REQUEST_HEAD.pack(len(header), sum(map(len, bodies)))
        try:
            _send(proc.stdin.fileno(), [lengths, header, *bodies], self._deadline(len(items)))
        except (OSError, TimeoutError) as e:  # BrokenPipeError: the helper is gone
            reason = "timeout" if isinstance(e, TimeoutError) else "exited"
            self._fail(reason, f"took no work ({e})")
            return False
        self._pending = [len(b) for b in bodies]
        return True

    def result(self) -> list[np.ndarray | None] | None:
        """The decoded records of the submitted items, in order (None: decode it yourself).
        The arrays are views of shared memory, valid until the next ``submit``. None when
        the helper failed, did not answer in time or answered nonsense (decode everything
        yourself)."""
        pending, self._pending = self._pending, None
        proc = self._proc
        if pending is None or proc is None or proc.stdout is None:
            return None
        fd = proc.stdout.fileno()
        deadline = self._deadline(len(pending))
        try:
            (size,) = ANSWER_HEAD.unpack(_recv_exact(fd, ANSWER_HEAD.size, deadline))
            counts = msgspec.msgpack.decode(_recv_exact(fd, size, deadline), type=list[int])
        except TimeoutError as e:
            self._fail("timeout", f"did not answer in time ({e})")
            return None
        except (EOFError, OSError) as e:
            self._fail("exited", f"gave no answer ({e})")
            return None
        except msgspec.DecodeError as e:
            self._fail("bad_answer", f"answered nonsense ({e})")
            return None
        if len(counts) != len(pending) or sum(max(c, 0) for c in counts) * RECORD_SIZE > (
            self._capacity
        ):
            self._fail("bad_answer", f"answered {len(counts)} counts for {len(pending)} days")
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
        self._capacity = 0  # a new helper gets a new, empty memfd
        self._ready = False

    def _deadline(self, days: int) -> float:
        return time.monotonic() + self.answer_timeout_s + days * self.timeout_per_day_s

    def _fail(self, reason: str, why: str) -> None:
        """Kill the helper (a stopped one too), count it and log one line; a new one is
        started with a large batch after the restart delay."""
        proc = self._proc
        pid = proc.pid if proc is not None else None
        if proc is not None and proc.poll() is None:
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) helper
        self._ready = False
        self._pending = None
        self.close()
        self.restarts += 1
        self._failures_in_row += 1
        delay = min(RESTART_MAX_S, self.restart_delay_s * 2 ** (self._failures_in_row - 1))
        self._start_after = time.monotonic() + delay
        if self.on_restart is not None:
            self.on_restart(reason)
        log.warning(
            "decode helper (pid %s) %s: killed; its work is decoded in the transformer; "
            "restart %d in %.3g s",
            pid,
            why,
            self.restarts,
            delay,
        )


def _send(fd: int, parts: list[bytes], deadline: float) -> None:
    """Write ``parts`` to the non-blocking ``fd`` by ``deadline`` (TimeoutError if not)."""
    views = [memoryview(p) for p in parts if len(p)]
    i = 0
    while i < len(views):
        try:
            n = os.writev(fd, views[i : i + _IOV_MAX])
        except BlockingIOError:
            n = 0
        while n and i < len(views):
            if n >= len(views[i]):
                n -= len(views[i])
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0
        if i < len(views):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise TimeoutError("the helper took no more work before the deadline")


def _recv_exact(fd: int, n: int, deadline: float) -> bytes:
    """Read exactly ``n`` bytes from ``fd`` by ``deadline`` (TimeoutError, EOFError if not)."""
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError(f"no answer before the deadline ({len(buf)} of {n} bytes)")
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError(f"helper pipe closed ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)
