"""Names that arrive on a socket, checked before they touch a path, a store or a label.

A store key ``SYMBOL/SIDE/TIMEFRAME`` read off the wire (a feed batch's ``stream``, the
keys of a heartbeat's ``ends``, a gateway topic) becomes a file path
(``StoreSet.path_for``: ``root/SYMBOL/SIDE/TF.bars``) and metric label values. Nothing
authenticates a feed, so every such name is checked first, in two steps:

1. **shape** (``key_problem``): three parts separated by ``/``; each part a name —
   ``[A-Za-z0-9][A-Za-z0-9._-]*``, at most ``MAX_PART`` characters (so no ``/``, ``..``,
   NUL, space or control character can reach a path), the whole key at most ``MAX_KEY``;
2. **configuration** (``StreamNames.check``): the symbol and side are ones the pipeline is
   configured for (``pipeline.symbols`` / ``pipeline.sides``) and the timeframe one the
   receiving stage takes (its upstream's kind: ``fetch``, ``days``, ``1m``; for the
   gateway 1m and every timeframe the resampler's cascade makes).

A name that fails either is a ``RejectedName`` (an ``UpstreamInvalid``) whose ``reason``
is one of ``REASONS``: the receiver counts it (``barstream_rejected_messages_total{socket,
reason}``), logs it (rate limited, ``shared/ratelog.py``) and drops the message.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Final

from barstream.shared.errors import UpstreamInvalid
from barstream.shared.header import StoreMeta

#: Longest symbol, side or timeframe accepted off the wire (the header's symbol field is 32).
MAX_PART: Final = 32
#: Longest store key accepted off the wire.
MAX_KEY: Final = 3 * MAX_PART + 2
_PART: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

#: The ``reason`` label values of a rejected name.
REASONS: Final = (
    "bad-key",  # not SYMBOL/SIDE/TF, or a part that is no name (/, .., NUL, too long)
    "unknown-symbol",
    "unknown-side",
    "unknown-timeframe",  # a timeframe / kind this receiver does not take
)


class RejectedName(UpstreamInvalid):
    """A name off the wire that is not one this receiver takes; ``reason`` is a
    ``REASONS`` entry (the label of the rejection counter)."""

    def __init__(self, reason: str, message: str, *, stream: str) -> None:
        self.reason = reason
        super().__init__(message, stream=printable(stream))


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe for one log line: control characters escaped, cut at ``limit``."""
    shown = text[:limit].encode("unicode_escape").decode("ascii")
    return shown + ("…" if len(text) > limit else "")


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a well-shaped store key (None: it is one)."""
    if len(key) > MAX_KEY:
        return f"store key of {len(key)} characters (at most {MAX_KEY})"
    parts = key.split("/")
    if len(parts) != 3:
        return f"store key is {len(parts)} part(s), not SYMBOL/SIDE/TIMEFRAME"
    for what, part in zip(("symbol", "side", "timeframe"), parts, strict=True):
        if len(part) > MAX_PART:
            return f"{what} of {len(part)} characters (at most {MAX_PART})"
        if not _PART.fullmatch(part):
            return f"{what} {printable(part)!r} is not a name ([A-Za-z0-9][A-Za-z0-9._-]*)"
    return None


def check_shape(key: str) -> StoreMeta:
    """The StoreMeta of a well-shaped key; raises RejectedName("bad-key")."""
    why = key_problem(key)
    if why is not None:
        raise RejectedName("bad-key", why, stream=key)
    return StoreMeta.from_key(key)


class StreamNames:
    """The store keys one receiver takes: configured symbols and sides, and its timeframes
    (``timeframes=None``: any well-shaped one)."""

    def __init__(
        self,
        symbols: Iterable[str],
        sides: Iterable[str],
        timeframes: Iterable[str] | None,
    ) -> None:
        self.symbols: Collection[str] = frozenset(symbols)
        self.sides: Collection[str] = frozenset(sides)
        self.timeframes: Collection[str] | None = (
            None if timeframes is None else frozenset(timeframes)
        )

    def check(self, key: str) -> StoreMeta:
        """The StoreMeta of ``key`` if this receiver takes it; else raises RejectedName."""
        meta = check_shape(key)
        if meta.symbol not in self.symbols:
            raise RejectedName(
                "unknown-symbol",
                f"symbol {meta.symbol!r} is not configured (pipeline.symbols: "
                f"{', '.join(sorted(self.symbols))})",
                stream=key,
            )
        if meta.side not in self.sides:
            raise RejectedName(
                "unknown-side",
                f"side {meta.side!r} is not configured (pipeline.sides: "
                f"{', '.join(sorted(self.sides))})",
                stream=key,
            )
        if self.timeframes is not None and meta.timeframe not in self.timeframes:
            raise RejectedName(
                "unknown-timeframe",
                f"{meta.timeframe!r} is not a stream this stage takes "
                f"({', '.join(sorted(self.timeframes))})",
                stream=key,
            )
        return meta

    def problem(self, key: str) -> RejectedName | None:
        """``check`` as a value: the rejection, or None when ``key`` is taken."""
        try:
            self.check(key)
        except RejectedName as e:
            return e
        return None
