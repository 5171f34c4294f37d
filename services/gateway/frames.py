"""A consumer's requests on its DEALER socket (sans socket ownership): one request encoded
and its reply decoded (``Call``: replies to earlier, timed-out requests are skipped; an
error reply raises ``GatewayError``; a deadline), a history request's pages
(``HistoryPages``: a long range is answered in pages, each asked from the next bar's
time), and the time arguments the client accepts (``ms``). The blocking and the asyncio
client (``client.py``) drive them, each waiting its own way.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import GatewayError
from barstream.shared.record import RECORD_DTYPE
from barstream.shared.sockets import read_ready_frames

#: A reply and its records frame (None for replies without records).
Answer = tuple[gp.Reply, np.ndarray | None]


def ms(value: int | float | str | dt.datetime | dt.date | None) -> int | None:
    """UTC milliseconds from an int (ms), ISO text, a datetime (naive = UTC) or a date."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a time must be ms since the epoch, ISO text or a datetime, not a bool")
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1000)
    if isinstance(value, dt.date):
        return int(
            dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp() * 1000
        )
    raise TypeError(f"cannot read {value!r} as a time")


class Call:
    """One request in flight on a DEALER: sent when made, answered by ``receive``."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        req: gp.Request,
        *,
        timeout_s: float,
        endpoint: str,
        on_timeout: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.req = req
        self.timeout_s = timeout_s
        self.endpoint = endpoint
        self.on_timeout = on_timeout
        self.sock.send(gp.encode(req))
        self.deadline = time.monotonic() + timeout_s

    def left_s(self) -> float:
        """Seconds left to wait. TimeoutError when none, after ``on_timeout`` (the client
        drops its socket: a late reply must not answer the next request)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.on_timeout()
            raise TimeoutError(f"gateway {self.endpoint}: no reply in {self.timeout_s}s")
        return left

    def receive(self) -> Answer | None:
        """The reply and its records, if it has arrived (replies to earlier, timed-out
        requests are skipped). Raises GatewayError on a refusal."""
        for frames in read_ready_frames(self.sock):
            reply = gp.decode_reply(frames[0].buffer)
            if reply.id != self.req.id:
                continue
            if isinstance(reply, gp.Error):
                raise GatewayError(reply.code, reply.message, endpoint=self.endpoint)
            data = None
            if isinstance(reply, gp.Records):
                data = np.frombuffer(frames[1].buffer, dtype=RECORD_DTYPE)
            return reply, data
        return None


class HistoryPages:
    """A history request and the pages of its answer (a long range comes in pages)."""

    def __init__(
        self,
        symbol: str,
        timeframe: str,
        start: int | str | dt.datetime | dt.date | None,
        end: int | str | dt.datetime | dt.date | None,
        side: str,
        last: int | None,
    ) -> None:
        topic = gp.topic_of(symbol, side, timeframe)
        self.next: gp.History | None = (
            gp.History(topic=topic, last=last)
            if last is not None
            else gp.History(topic=topic, start_ms=ms(start), end_ms=ms(end))
        )
        self.pages: list[np.ndarray] = []

    def add(self, answer: Answer) -> None:
        """A page arrived: keep it; ``next`` is the request for the following one (None: done)."""
        reply, page = answer
        assert isinstance(reply, gp.Records) and page is not None and self.next is not None
        self.pages.append(page)
        if not reply.more or not len(page):
            self.next = None
        else:
            start_ms = int(page["ts_ms"][-1]) + 1
            self.next = gp.History(
                topic=self.next.topic, start_ms=start_ms, end_ms=self.next.end_ms
            )

    def records(self) -> np.ndarray:
        return self.pages[0] if len(self.pages) == 1 else np.concatenate(self.pages)


def expect(answer: Answer, kind: type[gp.Listing] | type[gp.Status]) -> Any:
    reply, _ = answer
    assert isinstance(reply, kind)
    return reply
