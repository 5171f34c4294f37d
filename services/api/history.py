"""``GET /v1/bars``: which gateway history requests answer a query, page by page.

- no ``start``/``end``: the last ``limit`` bars (all bars when no limit — asked as one
  open range, so the gateway answers it in pages however long the series);
- ``start`` (and maybe ``end``): the bars from ``start``, the first ``limit`` of them;
- only ``end``: the last ``limit`` bars before ``end`` — asked as ranges ending at ``end``
  that widen (×4) until they hold ``limit`` bars or reach the series' first bar.

``provisional=false`` leaves out the bars that may still change; with a ``limit`` and no
``start`` the answer is the last ``limit`` *closed* bars (the range is ended at the series'
provisional tail, found by a look at its last bars), not ``limit`` bars less the open one.

``bound`` is checked before the first byte is sent: the most bars the answer can hold
(the topic's length, and for a range its span over the timeframe's nominal length) must be
within ``api.max_records``, else 413 naming the limit — so a response is never cut short
silently. Pages come from the gateway's own paging (``more``); each page is handed on as
soon as it arrives.

``features=SET`` asks the feature topic ``SYMBOL/SIDE/TF.SET`` instead (``Series``): each
bar there is ``1 + groups`` records of one ``ts_ms``, and the gateway cuts its pages only
where ``ts_ms`` changes, so every page is whole bars (bar and features committed together),
joined into rows (``joined.joined_dtype``: the bar fields, then one float64 per output) as
``GatewayClient.history(..., features=)`` joins them. Everything above — limits, ranges,
``provisional``, the bound — is counted in bars (rows), not records: ``last=N`` is asked as
the last ``(N + 1) * (1 + groups)`` records (the newest bar may be cut at the replica's
end) and the whole bars kept, the listing's ``count`` is divided by ``1 + groups``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from barstream.services.api.params import BarsQuery, TopicRef
from barstream.services.features.layout import Described
from barstream.services.gateway.client import AsyncGatewayClient
from barstream.services.gateway.frames import expect
from barstream.services.gateway.joined import described, joined, joined_dtype, whole_bars
from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import ApiError, GatewayError
from barstream.shared.record import FLAG_PROVISIONAL, RECORD_DTYPE
from barstream.shared.timeframe import DAY_MS, Timeframe

#: Nominal length of calendar timeframes, for the size bound and the widening search.
_MONTH_MS: Final = 28 * DAY_MS
_YEAR_MS: Final = 365 * DAY_MS
#: Bars looked at to find where a series' provisional tail begins.
_PEEK: Final = 16


def nominal_ms(timeframe: str) -> int:
    """Shortest length a bar of ``timeframe`` can have (month 28 days, year 365)."""
    tf = Timeframe.parse(timeframe)
    if tf.interval_ms is not None:
        return tf.interval_ms
    return _YEAR_MS * tf.count if tf.unit == "Y" else _MONTH_MS * tf.count


@dataclass(frozen=True)
class Series:
    """What a query reads from the gateway: a bar topic, or a feature topic with its set
    (``schema``) — whose records ``fetch`` joins into rows of whole bars."""

    topic: str
    schema: Described | None = None

    @property
    def stride(self) -> int:
        """Records per bar."""
        return 1 if self.schema is None else 1 + self.schema.n_groups

    @property
    def dtype(self) -> np.dtype:
        return RECORD_DTYPE if self.schema is None else joined_dtype(self.schema)

    @property
    def outputs(self) -> tuple[str, ...]:
        return () if self.schema is None else self.schema.outputs

    def bars(self, info: gp.TopicInfo) -> int:
        """Bars the topic holds (its listed count is records)."""
        return info.count // self.stride

    async def fetch(self, gw: AsyncGatewayClient, req: gp.History) -> tuple[gp.Records, np.ndarray]:
        """One history request of this topic, ``last`` in bars; the page as bar records or
        joined rows of whole bars."""
        if self.schema is None:
            reply, page = await gw.request(req)
            assert isinstance(reply, gp.Records) and page is not None
            return reply, page
        last = req.last
        if last is not None:
            req = gp.History(topic=req.topic, last=(last + 1) * self.stride)
        reply, page = await gw.request(req)
        assert isinstance(reply, gp.Records) and page is not None
        lo, hi = whole_bars(page, self.stride)
        if last is not None:
            lo = max(lo, hi - last * self.stride)
        return reply, joined(self.schema, page[lo:hi])


async def topic_info(gw: AsyncGatewayClient, topic: str) -> gp.TopicInfo:
    listing: gp.Listing = expect(await gw.request(gp.ListTopics(prefix=topic)), gp.Listing)
    for info in listing.topics:
        if info.topic == topic:
            return info
    raise ApiError(404, "unknown-topic", f"the gateway does not serve {topic}; see GET /v1/topics")


async def series_of(
    gw: AsyncGatewayClient, ref: TopicRef, features: str | None
) -> tuple[Series, gp.TopicInfo]:
    """The series a query reads and the gateway's listing of it; 404 for a topic the
    gateway does not serve — for a feature set, naming the sets it serves."""
    if features is None:
        return Series(ref.topic), await topic_info(gw, ref.topic)
    topic = f"{ref.topic}.{features}"
    listing: gp.Listing = expect(
        await gw.request(gp.ListTopics(prefix=ref.topic.rsplit("/", 1)[0] + "/")), gp.Listing
    )
    here: list[str] = []
    elsewhere: dict[str, list[str]] = {}
    for info in listing.topics:
        if info.features is None:
            continue
        if info.topic == topic:
            return Series(topic, described(info.features)), info
        tf = info.topic.rsplit("/", 1)[1].split(".", 1)[0]
        if tf == ref.timeframe:
            here.append(info.features.name)
        else:
            elsewhere.setdefault(info.features.name, []).append(tf)
    served = f"feature sets the gateway serves for {ref.topic}: {', '.join(here) or 'none'}"
    if elsewhere:
        others = "; ".join(f"{name} on {', '.join(tfs)}" for name, tfs in elsewhere.items())
        served += f" (for other timeframes: {others})"
    raise ApiError(
        404,
        "unknown-topic",
        f"the gateway does not serve feature topic {topic}; {served}; see GET /v1/topics",
    )


def bound(q: BarsQuery, info: gp.TopicInfo, max_records: int, series: Series | None = None) -> int:
    """Most bars the answer to ``q`` can hold; 413 when that is over ``max_records``."""
    most = info.count if series is None else series.bars(info)
    if q.start_ms is not None and q.end_ms is not None:
        # bars at least nominal_ms apart in [start, end): at most ceil(span / nominal)
        most = min(most, -(-(q.end_ms - q.start_ms) // nominal_ms(q.ref.timeframe)))
    if q.limit is not None:
        most = min(most, q.limit)
    if most > max_records:
        raise ApiError(
            413,
            "over-limit",
            f"{q.topic}: the range can hold up to {most} bars, over the limit of "
            f"{max_records} per request (api.max_records); narrow start/end or pass limit",
            limit=max_records,
        )
    return most


async def pages(
    gw: AsyncGatewayClient, q: BarsQuery, info: gp.TopicInfo, series: Series | None = None
) -> AsyncIterator[np.ndarray]:
    """The answer's bars (records, or joined rows for a feature topic), a gateway page at a
    time (provisional bars dropped when ``q.provisional`` is false)."""
    s = Series(q.topic) if series is None else series
    end_ms = q.end_ms
    if not q.provisional and q.limit is not None and q.start_ms is None:
        closed = await _closed_end_ms(gw, s)
        if closed is not None:
            end_ms = closed if end_ms is None else min(end_ms, closed)
    if q.start_ms is None and end_ms is None:
        if q.limit is None or q.limit >= s.bars(info):
            source = _range(gw, s, gp.History(topic=s.topic), None)
        else:
            source = _last(gw, s, q, info)
    elif q.start_ms is None:
        assert end_ms is not None
        source = _before(gw, s, q, end_ms, info)
    else:
        req = gp.History(topic=s.topic, start_ms=q.start_ms, end_ms=end_ms)
        source = _range(gw, s, req, q.limit)
    async for page in source:
        if not q.provisional:
            page = page[(page["flags"] & FLAG_PROVISIONAL) == 0]
        yield page


async def _last(
    gw: AsyncGatewayClient, s: Series, q: BarsQuery, info: gp.TopicInfo
) -> AsyncIterator[np.ndarray]:
    """The last ``q.limit`` bars: one request, or — when that is more than the gateway
    answers at once (``gateway.max_request_records``) — the widening ranges of ``_before``
    ending after the newest bar the listing saw."""
    assert q.limit is not None and info.last_ms is not None
    try:
        _, page = await s.fetch(gw, gp.History(topic=s.topic, last=q.limit))
    except GatewayError as e:
        if e.code != "too-large":
            raise
        async for page in _before(gw, s, q, info.last_ms + 1, info):
            yield page
        return
    yield page


async def _closed_end_ms(gw: AsyncGatewayClient, s: Series) -> int | None:
    """Where the series' closed bars end: its first provisional bar's open (one past the
    last bar when none is provisional); None for an empty series."""
    _, page = await s.fetch(gw, gp.History(topic=s.topic, last=_PEEK))
    if not len(page):
        return None
    provisional = np.flatnonzero(page["flags"] & FLAG_PROVISIONAL)
    return int(page["ts_ms"][provisional[0]] if len(provisional) else page["ts_ms"][-1] + 1)


async def _range(
    gw: AsyncGatewayClient, s: Series, req: gp.History, limit: int | None
) -> AsyncIterator[np.ndarray]:
    left = limit
    next_req: gp.History | None = req
    while next_req is not None:
        reply, page = await s.fetch(gw, next_req)
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
    gw: AsyncGatewayClient, s: Series, q: BarsQuery, end_ms: int, info: gp.TopicInfo
) -> AsyncIterator[np.ndarray]:
    """The last ``q.limit`` bars before ``end_ms`` (all of them without a limit)."""
    if q.limit is None:
        async for page in _range(gw, s, gp.History(topic=s.topic, end_ms=end_ms), None):
            yield page
        return
    span = max(1, q.limit) * nominal_ms(q.ref.timeframe)
    first_ms = info.first_ms if info.first_ms is not None else end_ms
    while True:
        start = end_ms - span
        req = gp.History(topic=s.topic, start_ms=max(start, 0), end_ms=end_ms)
        got = [p async for p in _range(gw, s, req, None)]
        records = np.concatenate(got) if got else np.zeros(0, dtype=s.dtype)
        if len(records) >= q.limit or start <= first_ms:
            yield records[len(records) - min(q.limit, len(records)) :]
            return
        span *= 4
