"""ZeroMQ sockets on the asyncio loop: wake-up, read what is ready, bind with a located error.

Every socket barstream reads on an event loop — the feed server's ROUTER, the feed
client's DEALER, the gateway's ROUTER and XPUB, the asyncio gateway client's SUB and
DEALER — is a plain (non-asyncio) zmq socket driven through its FD, by the one loop
written here::

    while running:
        for frames in read_ready(sock): handle(frames)    # at most READ_MAX, never blocks
        tick()                                            # the owner's own work, if any
        if readable(sock): yield to other tasks once      # more arrived meanwhile
        else: await wake.wait(timeout)                    # FD, notify() or timer

The zmq FD is edge-triggered and *any* operation on the socket (a send too) may consume
its edge: so ``zmq.EVENTS`` is checked after the work, and a socket that still holds
messages is read again after one yield instead of waiting for an edge that will not come.
``serve`` is that loop; the feed client, whose reading is async and time-bounded, and the
gateway client, which waits on two sockets, build theirs from the same pieces (``Wakeup``,
``read_ready``/``read_ready_frames``, ``readable``, ``wait_readable``).

``bind`` turns a failed bind into ``BindError`` naming the configuration key that holds
the address and what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable, Iterator
from typing import Final

import zmq

from barstream.shared.errors import BindError

#: Messages read per wake-up before yielding to other tasks.
READ_MAX: Final = 256


class Wakeup:
    """Wake a task when one of its zmq sockets may have events, when notified, or on a timer."""

    def __init__(self, *socks: zmq.Socket[bytes]) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._fds: list[int] = []
        for sock in socks:
            self.watch(sock)

    def watch(self, sock: zmq.Socket[bytes]) -> None:
        """Also wake on this socket (e.g. a socket monitor)."""
        fd = sock.getsockopt(zmq.FD)
        assert isinstance(fd, int)
        self._loop.add_reader(fd, self._event.set)
        self._fds.append(fd)

    def notify(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        if self._event.is_set():
            self._event.clear()
            return
        handle = self._loop.call_later(max(timeout_s, 0.0), self._event.set)
        try:
            await self._event.wait()
        finally:
            handle.cancel()
            self._event.clear()

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)


def readable(sock: zmq.Socket[bytes]) -> bool:
    """True when ``sock`` holds a message now (``zmq.EVENTS``; the FD alone may not say)."""
    events = sock.getsockopt(zmq.EVENTS)
    assert isinstance(events, int)
    return bool(events & zmq.POLLIN)


def read_ready(sock: zmq.Socket[bytes], limit: int = READ_MAX) -> Iterator[list[bytes]]:
    """The messages ``sock`` holds now, at most ``limit``, received without blocking."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        yield frames


def read_ready_frames(sock: zmq.Socket[bytes], limit: int = READ_MAX) -> Iterator[list[zmq.Frame]]:
    """``read_ready`` as ``zmq.Frame``s (no copy: large bodies are read in place)."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        yield frames


async def serve(
    sock: zmq.Socket[bytes],
    handle: Callable[[list[bytes]], None],
    *,
    timeout_s: float,
    wake: Wakeup | None = None,
    tick: Callable[[], float] | None = None,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """Read and ``handle`` every message of ``sock``, never stopping on one, until
    ``running()`` is false (or the task is cancelled). ``tick()`` runs after each read and
    returns how long the loop may wait before it must run again (else ``timeout_s``);
    ``wake`` (created here when None, closed on return) lets others wake the loop."""
    wake = wake if wake is not None else Wakeup(sock)
    try:
        while running():
            for frames in read_ready(sock):
                handle(frames)
            wait_s = tick() if tick is not None else timeout_s
            if readable(sock):
                await asyncio.sleep(0)
                continue
            await wake.wait(wait_s)
    finally:
        wake.close()


async def wait_readable(socks: list[zmq.Socket[bytes]], timeout_s: float) -> None:
    """Wait until one of ``socks`` may have input or ``timeout_s`` passed (callers then
    read with ``read_ready``: the FDs are edge-triggered)."""
    if any(readable(s) for s in socks):
        return
    wake = Wakeup(*socks)
    try:
        await wake.wait(timeout_s)
    finally:
        wake.close()


def bind(sock: zmq.Socket[bytes], address: str, key: str) -> str:
    """Bind ``sock`` to ``address`` (held by configuration key ``key``); returns the bound
    endpoint. Raises BindError naming the key, the address and what to do."""
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        reason = zmq.strerror(e.errno) if e.errno else str(e)
        raise BindError(key, address, reason, in_use=e.errno == errno.EADDRINUSE) from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
