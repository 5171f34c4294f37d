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

``features=SET``: the stream follows the feature topic ``SYMBOL/SIDE/TF.SET`` and each event
is in bars as for plain bars — ``start_offset``/``replaces`` count bars, each BAR carries
the set's outputs (keys named as the outputs, ``null`` while warming up) — made by the
gateway client's ``Joiner`` (each bar with its own features; the last bar handed on only
once all its records are there). The id is then the position in the topic's records,
which ``Last-Event-ID`` resumes from as for bars. The set is checked against the
gateway's listing before the stream starts (404 naming the sets it serves).

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
from barstream.services.gateway.joined import Joiner
from barstream.shared.errors import ApiError

if TYPE_CHECKING:
    from barstream.services.api.app import Api
    from barstream.services.api.history import Series

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


def encode(item: BarUpdate, tz: ZoneInfo | None, outputs: tuple[str, ...] = ()) -> bytes:
    event = Event(
        item.topic,
        item.seq,
        item.start_offset,
        item.replaces,
        item.kind,
        formats.bars(item.records, tz, outputs),
    )
    return (
        b"id: "
        + item.position.encode().encode()
        + b"\nevent: bars\ndata: "
        + _json.encode(event)
        + b"\n\n"
    )


def response(
    api: Api, q: StreamQuery, resume: Position | None, series: Series | None = None
) -> StreamingResponse:
    """The SSE response of ``q``; ``series``: its feature topic's (``history.series_of``)."""
    topic = q.topic
    keepalive_s = api.cfg.api.keepalive_s
    outputs = () if series is None else series.outputs
    joiner = None
    history = q.history
    if series is not None:
        assert series.schema is not None and series.topic == topic
        # As the client's stream(features=) does, without its listing request (the shared
        # streaming client's request socket must not carry concurrent requests): the
        # follower asks one bar's records more (the first may come cut), the joiner makes
        # bars of them.
        joiner = Joiner(topic, series.schema, api.pool.streams.keep_records)
        if resume is not None:
            joiner.resume(resume)
        history = (q.history + 1) * series.stride if q.history else 0

    async def follow(queue: asyncio.Queue[BarUpdate | BaseException]) -> None:
        try:
            async for item in api.pool.streams.stream_topics(
                [topic],
                history,
                q.closed_only,
                resume=None if resume is None else {topic: resume},
            ):
                if joiner is None:
                    await queue.put(item)
                    continue
                for joined_item in joiner.on_item(item, q.history):
                    await queue.put(joined_item)
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
                yield encode(item, q.tz, outputs)
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
