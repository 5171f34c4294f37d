"""Rate-limited warnings per peer: a hostile peer must not fill the disk through the log.

Every malformed or rejected message is *counted* (the metrics); this decides which of them
are also *logged*. Per peer (a ROUTER identity, an upstream endpoint): the first event is
logged in full, then at most one summary line per ``interval_s``::

    tcp://127.0.0.1:7103: dropped malformed message from peer 00a1b2c3d4: bad header: …
    tcp://127.0.0.1:7103: peer 00a1b2c3d4: 4,812 more malformed messages in the last 10 s (last: …)

The summary is written by the next event after the interval (or by ``flush()``, which a
service's loop may call on a timer), so a peer that sends one burst and goes away still has
its count logged at the next event of any peer. At most ``max_peers`` peers are tracked; past
that the oldest is summarised and forgotten (a connect flood of fresh identities costs one
line per ``interval_s`` per tracked slot, not one per message). Pure: no I/O but ``log``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: Seconds between two summary lines of one peer.
INTERVAL_S: Final = 10.0
#: Peers whose counts are tracked at once.
MAX_PEERS: Final = 256
#: New peers logged in full per ``interval_s``; the events of further new peers are
#: summarised together as peer ``NEW_PEERS`` (a flood of fresh connections, each with a
#: new zmq identity, must not be one line per message either).
MAX_NEW_PER_INTERVAL: Final = 20
NEW_PEERS: Final = "(new peers)"


@dataclass
class _Peer:
    logged_at: float  # when this peer's last line was written
    suppressed: int = 0  # events since that line, not logged
    last_why: str = ""
    prefix: str = ""  # the socket's endpoint, starting its summary lines


class RateLimitedLog:
    """Log the first event of each peer, then one summary per peer per ``interval_s``."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        interval_s: float = INTERVAL_S,
        max_peers: int = MAX_PEERS,
        max_new: int = MAX_NEW_PER_INTERVAL,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``what`` names the events in summaries ("malformed messages")."""
        self.log = log
        self.what = what
        self.interval_s = interval_s
        self.max_peers = max_peers
        self.max_new = max_new
        self._new_window = -1e18  # start of the interval counting new peers
        self._new_in_window = 0
        self.level = level
        self.clock = clock
        self.events = 0  # every event, logged or not
        self.lines = 0  # lines written
        self._peers: OrderedDict[str, _Peer] = OrderedDict()

    def event(self, prefix: str, peer: str, why: str, first: str) -> None:
        """One event of ``peer``: ``first`` is the full line (logged when this peer's first
        event, or its first after ``interval_s`` of silence); ``why`` the short reason a
        summary repeats; ``prefix`` starts every line (the socket's endpoint)."""
        self.events += 1
        now = self.clock()
        state = self._peers.get(peer)
        if state is None:
            if now - self._new_window >= self.interval_s:
                self._new_window, self._new_in_window = now, 0
            self._new_in_window += 1
            if self._new_in_window > self.max_new:
                peer, why = NEW_PEERS, f"{peer}: {why}"
                state = self._peers.get(peer)
            if state is None:
                self._track(peer, _Peer(logged_at=now, prefix=prefix))
                self._write(first)
                return
        self._peers.move_to_end(peer)
        if now - state.logged_at < self.interval_s:
            state.suppressed += 1
            state.last_why = why
            return
        if state.suppressed:
            state.suppressed += 1  # this one too
            state.last_why = why
            self._summary(peer, state, now)
        else:
            self._write(first)  # quiet for a whole interval: log in full again
        state.logged_at = now
        state.suppressed = 0

    def flush(self) -> None:
        """Write the pending summary of every peer whose interval has passed."""
        now = self.clock()
        for peer, state in list(self._peers.items()):
            if state.suppressed and now - state.logged_at >= self.interval_s:
                self._summary(peer, state, now)
                state.logged_at = now
                state.suppressed = 0

    def _track(self, peer: str, state: _Peer) -> None:
        while len(self._peers) >= self.max_peers:
            old, gone = self._peers.popitem(last=False)
            if gone.suppressed:
                self._summary(old, gone, self.clock())
        self._peers[peer] = state

    def _summary(self, peer: str, state: _Peer, now: float) -> None:
        span = max(now - state.logged_at, 0.0)
        lead = f"{state.prefix}: " if state.prefix else ""
        self._write(
            f"{lead}peer {peer}: {state.suppressed:,} more {self.what} in the last "
            f"{span:.0f} s (last: {state.last_why})"
        )

    def _write(self, line: str) -> None:
        self.lines += 1
        self.log.log(self.level, "%s", line)
