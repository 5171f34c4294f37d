"""``GET /v1/bars``: which gateway history requests answer a query, page by page.

- no ``start``/``end``: the last ``limit`` bars (all bars when no limit);
- ``start`` (and maybe ``end``): the bars from ``start``, the first ``limit`` of them;
- only ``end``: the last ``limit`` bars before ``end`` — asked as ranges ending at ``end``
  that widen (×4) until they hold ``limit`` bars or reach the series' first bar.

``bound`` is checked before the first byte is sent: the most bars the answer can hold
(the topic's length, and for a range its span over the timeframe's nominal length) must be
within ``api.max_records``, else 413 naming the limit — so a response is never cut short
silently. Pages come from the gateway's own paging (``more``); each page is handed on as
soon as it arrives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

import numpy as np

from barstream.services.api.params import BarsQuery
from barstream.services.gateway.client import AsyncGatewayClient
from barstream.services.gateway.frames import expect
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import ApiError
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import DAY_MS, Timeframe

#: Nominal length of calendar timeframes, for the size bound and the widening search.
_MONTH_MS: Final = 28 * DAY_MS
_YEAR_MS: Final = 365 * DAY_MS


def nominal_ms(timeframe: str) -> int:
    """Shortest length a bar of ``timeframe`` can have (month 28 days, year 365)."""
    tf = Timeframe.parse(timeframe)
    if tf.interval_ms is not None:
        return tf.interval_ms
    return _YEAR_MS * tf.count if tf.unit == "Y" else _MONTH_MS * tf.count


async def topic_info(gw: AsyncGatewayClient, topic: str) -> gp.TopicInfo:
    listing: gp.Listing = expect(await gw.request(gp.ListTopics(prefix=topic)), gp.Listing)
    for info in listing.topics:
        if info.topic == topic:
            return info
    raise ApiError(404, "unknown-topic", f"the gateway does not serve {topic}; see GET /v1/topics")


def bound(q: BarsQuery, info: gp.TopicInfo, max_records: int) -> int:
    """Most bars the answer to ``q`` can hold; 413 when that is over ``max_records``."""
    most = info.count
    if q.start_ms is not None and q.end_ms is not None:
        most = min(most, (q.end_ms - q.start_ms) // nominal_ms(q.ref.timeframe) + 1)
    if q.limit is not None:
        most = min(most, q.limit)
    if most > max_records:
        raise ApiError(
            413,
            "over-limit",
            f"{q.ref.topic}: the range can hold up to {most} bars, over the limit of "
            f"{max_records} per request (api.max_records); narrow start/end or pass limit",
            limit=max_records,
        )
    return most


async def pages(
    gw: AsyncGatewayClient, q: BarsQuery, info: gp.TopicInfo
) -> AsyncIterator[np.ndarray]:
    """The answer's records, a gateway page at a time (provisional bars dropped when
    ``q.provisional`` is false)."""
    topic = q.ref.topic
    if q.start_ms is None and q.end_ms is None:
        first: gp.History = gp.History(
            topic=topic, last=q.limit if q.limit is not None else info.count
        )
        source = _range(gw, first, None)
    elif q.start_ms is None:
        assert q.end_ms is not None
        source = _before(gw, q, info)
    else:
        source = _range(gw, gp.History(topic=topic, start_ms=q.start_ms, end_ms=q.end_ms), q.limit)
    async for page in source:
        if not q.provisional:
            page = page[(page["flags"] & FLAG_PROVISIONAL) == 0]
        yield page


async def _range(
    gw: AsyncGatewayClient, req: gp.History, limit: int | None
) -> AsyncIterator[np.ndarray]:
    left = limit
    next_req: gp.History | None = req
    while next_req is not None:
        reply, page = await gw.request(next_req)
        assert isinstance(reply, gp.Records) and page is not None
        if left is not None:
            page = page[:left]
            left -= len(page)
        yield page
        if not reply.more or not len(page) or left == 0 or next_req.last is not None:
            next_req = None
        else:
            next_req = gp.History(
                topic=req.topic, start_ms=int(page["ts_ms"][-1]) + 1, end_ms=req.end_ms
            )


async def _before(
    gw: AsyncGatewayClient, q: BarsQuery, info: gp.TopicInfo
) -> AsyncIterator[np.ndarray]:
    """The last ``q.limit`` bars before ``q.end_ms`` (all of them without a limit)."""
    assert q.end_ms is not None
    if q.limit is None:
        async for page in _range(gw, gp.History(topic=q.ref.topic, end_ms=q.end_ms), None):
            yield page
        return
    span = max(1, q.limit) * nominal_ms(q.ref.timeframe)
    first_ms = info.first_ms if info.first_ms is not None else q.end_ms
    while True:
        start = q.end_ms - span
        req = gp.History(topic=q.ref.topic, start_ms=max(start, 0), end_ms=q.end_ms)
        got = [p async for p in _range(gw, req, None)]
        records = np.concatenate(got) if got else np.zeros(0, dtype=RECORD_DTYPE)
        if len(records) >= q.limit or start <= first_ms:
            yield records[len(records) - min(q.limit, len(records)) :]
            return
        span *= 4
