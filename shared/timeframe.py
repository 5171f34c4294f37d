"""Timeframes ("5m", "4h", "1d", "1W", "1M") and the time units: the system's one definition.

Contract
--------
* ``MINUTE_MS``, ``HOUR_MS``, ``DAY_MS``, ``WEEK_MS`` are defined here and only here; every
  module that needs a time unit imports it from this module.
* Stored times are UTC ms of the bar open (``ts_ms``). A :class:`Timeframe` is only a length:
  which clock its bars follow is an alignment (``shared.alignment``), which minutes they hold
  also depends on sessions (``shared.sessions``).
* ``Timeframe.parse`` accepts ``N`` followed by one of ``m h d W M Y`` (N ≥ 1); minute and hour
  timeframes must be shorter than a day. ``str(tf)`` gives the text back (``"90m"``, not
  ``"1h30m"``). A bad text raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

from barstream.shared.errors import ConfigError

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
WEEK_MS: Final = 7 * DAY_MS

#: Units in parse order: minutes, hours, days, weeks, months, years.
UNITS: Final = ("m", "h", "d", "W", "M", "Y")
_UNIT_MS: Final = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "W": WEEK_MS}
_TF_RE: Final = re.compile(r"^([1-9][0-9]*)([mhdWMY])$")


@dataclass(frozen=True)
class Timeframe:
    """A bar length: ``count`` × ``unit`` (``m`` minute, ``h`` hour, ``d`` day, ``W`` week,
    ``M`` month, ``Y`` year). Minute and hour timeframes must be shorter than a day."""

    count: int
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS or self.count < 1:
            raise ConfigError("timeframe", f"{self.count}{self.unit}", "not a valid timeframe")
        if self.unit in "mh" and self.count * _UNIT_MS[self.unit] >= DAY_MS:
            raise ConfigError(
                "timeframe", str(self), "minute/hour timeframes must be shorter than 1d"
            )

    @classmethod
    def parse(cls, text: str) -> Timeframe:
        """``"15m"`` → ``Timeframe(15, "m")``; raises ConfigError naming the text."""
        m = _TF_RE.match(text.strip())
        if m is None:
            raise ConfigError("timeframe", text, "expected N followed by one of m h d W M Y")
        return cls(int(m.group(1)), m.group(2))

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"

    @property
    def interval_ms(self) -> int | None:
        """Nominal length for m/h/d/W (a DST day is still "1d"); None for months and years."""
        unit_ms = _UNIT_MS.get(self.unit)
        return None if unit_ms is None else self.count * unit_ms

    @property
    def is_intraday(self) -> bool:
        return self.unit in "mh"

    @property
    def sort_key(self) -> tuple[int, int]:
        """Orders timeframes from shortest to longest ("90m" before "2h")."""
        if self.is_intraday:
            assert self.interval_ms is not None
            return (0, self.interval_ms)
        return (UNITS.index(self.unit) - 1, self.count)


def parse_timeframe(tf: Timeframe | str) -> Timeframe:
    return tf if isinstance(tf, Timeframe) else Timeframe.parse(tf)


def time_of_day_ms(t: dt.time) -> int:
    """A local time of day as ms after midnight (``dt.time(17)`` → 61_200_000)."""
    return ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000
