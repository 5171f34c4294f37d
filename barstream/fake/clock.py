"""The fake upstream's simulated clock.

``SimClock(sim_start_ms, speed)`` maps the wall instant of its creation (or of the last
``set``) to ``sim_start_ms`` and runs ``speed`` times faster (0 stops it; tests do, then move
it by hand with ``set``/``advance``). The server's routes ask it what "now" and "today" are
(a day before the simulated today is final; today is served only live), and the HTTP
``Date`` header carries it, which the downloader follows. Thread safe: the server's threads
and the control plane share one clock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

from barstream.shared.timeframe import DAY_MS


class SimClock:
    """Simulated time: ``sim_ms`` at the wall instant of the last set, advancing ``speed``×."""

    def __init__(
        self, sim_start_ms: int, speed: float = 1.0, *, wall: Callable[[], float] = time.monotonic
    ) -> None:
        self._wall = wall
        self._lock = threading.Lock()
        self._anchor_wall = wall()
        self._anchor_sim = sim_start_ms
        self._speed = speed

    @property
    def speed(self) -> float:
        return self._speed

    def now_ms(self) -> int:
        with self._lock:
            return self._anchor_sim + int((self._wall() - self._anchor_wall) * 1000 * self._speed)

    def today(self) -> dt.date:
        return dt.date(1970, 1, 1) + dt.timedelta(days=self.now_ms() // DAY_MS)

    def set(self, sim_ms: int, *, speed: float | None = None) -> None:
        with self._lock:
            self._anchor_wall = self._wall()
            self._anchor_sim = sim_ms
            if speed is not None:
                self._speed = speed

    def set_speed(self, speed: float) -> None:
        self.set(self.now_ms(), speed=speed)

    def advance(self, ms: int) -> None:
        self.set(self.now_ms() + ms)


def parse_iso_ms(text: str) -> int:
    """An ISO date or date/time as ms since the epoch, UTC unless it names its offset
    (``2026-01-05``, ``2026-06-24T12:00``); raises ValueError on anything else."""
    when = dt.datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp() * 1000)
