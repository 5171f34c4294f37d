"""The downloader's request budget and retry policy: how many requests, and how spaced.

- ``RequestBudget``: one token bucket per process (``rate_per_s`` sustained, ``burst`` at
  once); every HTTP request takes a token first, retries included.
- ``RetryPolicy``: at most ``max_attempts`` requests per fetch, exponential backoff with full
  jitter between them (``uniform(0, min(max, base * 2**n))``), ``Retry-After`` as a floor.

Both are re-exported by ``source`` (their users import them from there).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RequestBudget", "RetryPolicy"]


class RequestBudget:
    """A token bucket shared by every request of the process: ``rate_per_s`` sustained,
    ``burst`` back to back. Waiters are served in arrival order."""

    def __init__(
        self, rate_per_s: float, burst: int = 1, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s = {rate_per_s!r}: must be > 0")
        if burst < 1:
            raise ValueError(f"burst = {burst!r}: must be >= 1")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._lock = asyncio.Lock()
        self.requests_total = 0
        self.waits_total = 0
        self.wait_seconds_total = 0.0

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed; returns the seconds waited."""
        async with self._lock:
            self._refill()
            waited = 0.0
            if self._tokens < 1.0:
                waited = (1.0 - self._tokens) / self.rate_per_s
                self.waits_total += 1
                self.wait_seconds_total += waited
                await asyncio.sleep(waited)
                self._refill()
            self._tokens = max(self._tokens - 1.0, 0.0)
            self.requests_total += 1
            return waited

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def __repr__(self) -> str:
        return (
            f"<RequestBudget rate_per_s={self.rate_per_s:g} burst={self.burst} "
            f"requests={self.requests_total} waits={self.waits_total} "
            f"wait_s={self.wait_seconds_total:.3f}>"
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff with full jitter; ``Retry-After`` is a floor, capped at ``max_retry_after_s``."""

    max_attempts: int = 6
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    max_retry_after_s: float = 120.0

    def delay_s(self, retry: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the first retry)."""
        delay = rng.uniform(0.0, min(self.max_delay_s, self.base_delay_s * 2 ** (retry - 1)))
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_retry_after_s))
        return delay
