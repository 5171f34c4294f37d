"""Wait for a condition in a test, never for a fixed time.

    wait_for(predicate, timeout_s, what="the gateway to publish", on_timeout=logs)

polls ``predicate`` every ``every_s`` until it returns a truthy value (a bool, a count,
an object; not a numpy array, whose truth is ambiguous) and returns that value. After ``timeout_s`` it raises ``AssertionError`` naming what was awaited, for how
long, the predicate's last value (or the last exception it was allowed to raise) and
whatever ``on_timeout()`` returns: the log tails or counters that explain the failure.
The predicate is always called at least once, and once more after the deadline.

A predicate may fail the test early by raising (a process that exited, a consumer that
failed); only the exception types in ``ignore`` mean "not yet" (a port not open yet, a
request timing out while a service starts). A predicate that blocks by itself (a
``select`` on a pipe with a timeout) is polled with ``every_s=0``.

``await async_wait_for(...)`` is the same inside an event loop: it sleeps with
``asyncio.sleep`` so the tasks under test run while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: Default poll interval: short next to every wait in the suite, long enough to leave the
#: machine to the processes under test.
EVERY_S = 0.05


def wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float,
    *,
    what: str,
    every_s: float = EVERY_S,
    on_timeout: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``predicate()``'s first truthy value within ``timeout_s``; else AssertionError."""
    poll = _Poll(predicate, timeout_s, what, every_s, on_timeout, ignore)
    while not poll.done():
        time.sleep(poll.pause())  # the poll interval
    return poll.result()


async def async_wait_for(
    predicate: Callable[[], T | None],
    timeout_s: float,
    *,
    what: str,
    every_s: float = 0.01,
    on_timeout: Callable[[], str] | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """``wait_for`` inside an event loop: the other tasks run between two polls."""
    poll = _Poll(predicate, timeout_s, what, every_s, on_timeout, ignore)
    while not poll.done():
        await asyncio.sleep(poll.pause())  # the poll interval
    return poll.result()


class _Poll(Generic[T]):
    """One wait: the deadline, the predicate's last value and last ignored error."""

    def __init__(
        self,
        predicate: Callable[[], T | None],
        timeout_s: float,
        what: str,
        every_s: float,
        on_timeout: Callable[[], str] | None,
        ignore: tuple[type[BaseException], ...],
    ) -> None:
        self.predicate, self.timeout_s, self.what = predicate, timeout_s, what
        self.every_s, self.on_timeout, self.ignore = every_s, on_timeout, ignore
        self.deadline = time.monotonic() + timeout_s
        self.value: T | None
        self.error: BaseException | None = None

    def done(self) -> bool:
        """True once the predicate holds; raises AssertionError once past the deadline."""
        expired = time.monotonic() >= self.deadline  # then this check is the last one
        try:
            self.value = self.predicate()
            if self.value:
                return True
        except self.ignore as e:
            self.error = e
        if expired:
            raise AssertionError(self.failure())
        return False

    def result(self) -> T:
        assert self.value is not None  # done(): it is truthy
        return self.value

    def pause(self) -> float:
        return max(0.0, min(self.every_s, self.deadline - time.monotonic()))

    def failure(self) -> str:
        parts = [f"timed out after {self.timeout_s:g}s waiting for {self.what}"]
        if hasattr(self, "value") and not isinstance(self.value, bool | None):
            parts.append(f"last value: {_short(self.value)}")
        if self.error is not None:
            parts.append(f"last error: {self.error!r}")
        message = "; ".join(parts)
        if self.on_timeout is not None:
            message += "\n" + self.on_timeout()
        return message


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
