"""``GET /v1/stream/{symbol}/{side}/{timeframe}``: live bars as Server-Sent Events.

Each SSE stream follows its topic with the gateway client's Clone-pattern state machine
(gap-free across gateway restarts: the client resyncs) and sends every item it yields as
one event::

    id: EPOCH.SEQ.END
    event: bars
    data: {"topic", "seq", "start_offset", "replaces", "kind", "bars": [BAR, …]}

meaning "from ``start_offset`` on, the series now reads ``bars``" (the client's
``BarUpdate``). The id is the consumer's position (``Position.encode``): a browser's
EventSource sends it back as ``Last-Event-ID`` when it reconnects, and the stream then
continues from there — what changed or came since, no gap and no duplicate — instead of
starting with a history event. Idle streams get a ``: keepalive`` comment every
``api.keepalive_s``; ``retry: 1000`` asks browsers to reconnect after a second.

The gateway stream runs in its own task feeding a small queue, so waiting for the next
event can time out (keep-alive) without cancelling the stream itself; a client that goes
away cancels both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import msgspec
from starlette.responses import StreamingResponse

from barstream.services.api import formats
from barstream.services.api.params import StreamQuery
from barstream.services.gateway.follower import BarUpdate, Position
from barstream.shared.errors import ApiError

if TYPE_CHECKING:
    from barstream.services.api.app import Api

log = logging.getLogger("barstream.api")

#: Items queued per stream between the gateway task and the HTTP writer.
QUEUE_ITEMS: Final = 64


class Event(msgspec.Struct):
    topic: str
    seq: int
    start_offset: int
    replaces: int
    kind: str
    bars: list[formats.Bar]


_json = msgspec.json.Encoder()


def resume_position(header: str | None) -> Position | None:
    """The ``Last-Event-ID`` a reconnecting client sends, or None; 422 when malformed."""
    if header is None or not header.strip():
        return None
    try:
        return Position.decode(header)
    except ValueError as e:
        raise ApiError(422, "bad-event-id", f"Last-Event-ID: {e}; reconnect without it") from None


def encode(item: BarUpdate, tz: ZoneInfo | None) -> bytes:
    event = Event(
        item.topic,
        item.seq,
        item.start_offset,
        item.replaces,
        item.kind,
        formats.bars(item.records, tz),
    )
    return (
        b"id: "
        + item.position.encode().encode()
        + b"\nevent: bars\ndata: "
        + _json.encode(event)
        + b"\n\n"
    )


def response(api: Api, q: StreamQuery, resume: Position | None) -> StreamingResponse:
    topic = q.ref.topic
    keepalive_s = api.cfg.api.keepalive_s

    async def follow(queue: asyncio.Queue[BarUpdate | BaseException]) -> None:
        try:
            async for item in api.pool.streams.stream_topics(
                [topic],
                q.history,
                q.closed_only,
                resume=None if resume is None else {topic: resume},
            ):
                await queue.put(item)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # handed to the writer, which ends the response
            await queue.put(e)

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue[BarUpdate | BaseException] = asyncio.Queue(QUEUE_ITEMS)
        task = asyncio.create_task(follow(queue), name=f"sse {topic}")
        api.live_streams += 1
        api.metrics.streams.inc()
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    async with asyncio.timeout(keepalive_s):  # not wait_for (see pool.py)
                        item = await queue.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if isinstance(item, BaseException):
                    log.warning("api: live stream %s ended: %s", topic, item)
                    return
                yield encode(item, q.tz)
                api.metrics.events.inc()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            api.live_streams -= 1
            api.metrics.streams.dec()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
