"""The consumer wire protocol of the gateway (inference engines, CLI, tools ⇄ gateway).

Two sockets, both bound by the gateway (127.0.0.1 unless configured otherwise):

- ``gateway.publish`` — an XPUB socket (consumers connect SUB): live bar updates and heartbeats;
- ``gateway.requests`` — a ROUTER socket (consumers connect DEALER, or REQ): history, snapshot,
  list and status requests, one reply per request.

Frame 0 of every publication is the zmq *topic*; every control header is a msgspec msgpack
map tagged by ``t`` and carrying the protocol version ``v``; records travel as raw
little-endian numpy bytes (``shared.record.RECORD_DTYPE``, 64 B each) in a frame of their own.

Publications (XPUB → SUB)::

    ┌──────────────────┬─────────────────────────────────────────────────┬────────────┐
    │ topic            │ {t:"update", v, epoch, seq, start, count, end,  │ records    │
    │ "EUR-USD/BID/1h" │  closed_end, wall_ms}                           │ count×64 B │
    └──────────────────┴─────────────────────────────────────────────────┴────────────┘
      "From offset ``start`` on, the topic's series reads these ``count`` records, and the
      series is ``end`` records long." ``start + count == end`` except when one commit's
      change is larger than ``UPDATE_MAX_RECORDS``: it is then split into consecutive
      messages (consecutive ``seq``) with the same ``end``; the last one has
      ``start + count == end`` (clients join them before applying). ``seq`` counts the
      topic's messages (+1 per message, never reset while ``epoch`` stays the same; it
      survives gateway restarts). ``epoch`` is the gateway store's id: a new epoch means
      the gateway's copy was rebuilt and sequence numbers start over. ``closed_end`` is
      the offset of the first provisional record of the series (``end`` when none):
      records before it are closed bars. Only committed records are ever published.

    ┌──────────────────┬──────────────────────────────────────────────────────────────┐
    │ "!hb"            │ {t:"hb", v, instance, wall_ms, interval_ms, hb, window,       │
    │                  │  seqs:{topic:seq}}                                            │
    └──────────────────┴──────────────────────────────────────────────────────────────┘
      Every ``HEARTBEAT_INTERVAL_S`` and right after a new subscription arrives. ``hb``
      counts the instance's heartbeats (1, 2, …). ``seqs`` holds the last published ``seq``
      of every topic whose seq moved during the last ``window`` heartbeat intervals
      (``HEARTBEAT_WINDOW``), or of every topic when ``window`` is 0 (a full heartbeat:
      every ``HEARTBEAT_FULL_EVERY``-th one, the first included) — so a heartbeat's size
      follows what changed, not how many topics there are. A consumer whose last seen seq
      of a topic is lower missed messages (dropped at the send high-water mark) and
      resyncs it; one whose ``hb`` jumps by more than ``window`` missed heartbeats, so it
      cannot know what they said and resyncs every topic it follows. No message for
      ``HEARTBEAT_TIMEOUT_S`` means the gateway is gone or stalled (a quiet market still
      has heartbeats). ``instance`` changes when the gateway process restarts.

Topics are ``SYMBOL/SIDE/TIMEFRAME``, so zmq prefix subscriptions select a symbol
(``"EUR-USD/"``) or a symbol's side (``"EUR-USD/BID/"``). There is no second topic form
for "one timeframe across symbols": a consumer subscribes to each ``SYMBOL/SIDE/TF`` topic
it wants (the ``list`` request names them; zmq subscriptions are cheap), which costs no
extra publication, unlike a second topic form that would send every update twice.

Requests (DEALER → ROUTER; the ROUTER sees an identity frame first, and a REQ peer's empty
delimiter frame, which the reply echoes)::

    ┌────────────────────────────────────────────────────────────────────────────────────┐
    │ {t:"history", v, id, topic, start_ms?, end_ms?, last?}                             │
    │     bars with start_ms <= ts_ms < end_ms (either bound may be absent), or the last │
    │     ``last`` bars. A range longer than ``max_request_records`` is answered in pages│
    │     (``more`` true; ask again from the next bar's time).                           │
    ├────────────────────────────────────────────────────────────────────────────────────┤
    │ {t:"snapshot", v, id, topic, last, since_seq, from_offset, epoch}                  │
    │     the Clone pattern's state request. since_seq < 0: the last ``last`` bars.      │
    │     since_seq >= 0 (a resync): the records from the lowest offset that changed in │
    │     messages after ``since_seq`` (or ``from_offset``, the end of the caller's     │
    │     copy, when lower) to the end; ``more`` when longer than max_request_records.  │
    ├────────────────────────────────────────────────────────────────────────────────────┤
    │ {t:"list", v, id, prefix}       topics, their lengths, time ranges and seqs        │
    ├────────────────────────────────────────────────────────────────────────────────────┤
    │ {t:"status", v, id}             offsets, upstream lag, consumers, counters         │
    └────────────────────────────────────────────────────────────────────────────────────┘

Replies (ROUTER → DEALER), ``id`` echoes the request's::

    ┌───────────────────────────────────────────────────────────────────────┬────────────┐
    │ {t:"records", v, id, topic, epoch, seq, start, count, end, more}      │ records    │
    │     "these ``count`` records are offsets [start, start+count) of the  │ count×64 B │
    │      series as of message ``seq``; the series is ``end`` records long" │            │
    ├───────────────────────────────────────────────────────────────────────┴────────────┤
    │ {t:"listing", v, id, topics:[{topic, epoch, seq, count, first_ms, last_ms}]}       │
    │ {t:"status",  v, id, instance, wall_ms, upstream, upstream_age_s, topics:{...},    │
    │               consumers, subscriptions, requests, errors, published}              │
    │ {t:"error",   v, id, code, message}      a refused request; ``code`` is one of     │
    │               ERROR_CODES, ``message`` names what was wrong and what to do         │
    └────────────────────────────────────────────────────────────────────────────────────┘

Bounds: a request frame is at most ``MAX_REQUEST_BYTES`` (a larger one is refused
``bad-frames``; over ``MAX_REQUEST_BYTES`` + 4 KiB zmq drops the message and the connection
that sent it); a reply carries at most ``max_request_records`` records. A request that
cannot be decoded still gets an ``error`` reply (``id`` 0 when unknown); decoding errors
raise ``Malformed`` (shared/errors.py) with the reply's code.

The Clone pattern, as the client library implements it: subscribe to the topic and to
``"!hb"``; wait for a heartbeat (it proves the subscriptions are active); request a
snapshot (``seq`` S); drop updates with ``seq`` <= S; apply the rest in order. An update
with ``seq`` > last + 1, or a heartbeat whose seq for the topic is above the last seen,
means messages were dropped: request ``snapshot`` with ``since_seq`` = last.
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from barstream.shared.errors import Malformed

PROTOCOL_VERSION: Final = 1
#: Topic frame of heartbeats ('!' sorts before every symbol and never starts one).
HEARTBEAT_TOPIC: Final = b"!hb"
HEARTBEAT_INTERVAL_S: Final = 1.0
#: A heartbeat names the topics whose seq moved during this many heartbeat intervals.
HEARTBEAT_WINDOW: Final = 3
#: Every this many heartbeats (and the first) name every topic's seq.
HEARTBEAT_FULL_EVERY: Final = 10
#: A consumer that hears nothing (no update, no heartbeat) for this long reconnects.
HEARTBEAT_TIMEOUT_S: Final = 3.5
#: Largest request frame accepted (bytes); the gateway's ZMQ_MAXMSGSIZE is 4 KiB above it.
MAX_REQUEST_BYTES: Final = 64 * 1024
#: One commit's change larger than this goes out as several consecutive update messages.
UPDATE_MAX_RECORDS: Final = 65536
#: Messages the gateway queues per consumer before dropping (the consumer resyncs).
PUBLISH_HWM: Final = 10_000
#: Request peers seen within this many seconds count as connected consumers (``Status``).
CONSUMER_TTL_S: Final = 60.0

ERROR_CODES: Final = (
    "malformed",  # not a msgpack map of this protocol
    "unsupported-version",  # v is not PROTOCOL_VERSION
    "unknown-type",  # t names no request
    "invalid-field",  # a field is missing, of the wrong type or out of range
    "bad-frames",  # wrong number of frames, or an empty frame
    "unknown-topic",  # the gateway serves no such topic
    "bad-range",  # start_ms > end_ms, negative counts, …
    "too-large",  # more records than max_request_records in one reply
    "stale-epoch",  # since_seq refers to another epoch: ask for a fresh snapshot
    "internal",  # a bug: the gateway logged it and keeps serving
)

_TOPIC = re.compile(
    r"^[A-Z0-9]+(\.[A-Z0-9]+)?-[A-Z0-9]+/(BID|ASK)/[0-9]+[a-zA-Z]+(\.[a-z][a-z0-9_]*)?$"
)


def topic_of(symbol: str, side: str, timeframe: str) -> str:
    return f"{symbol}/{side}/{timeframe}"


def valid_topic(topic: str) -> bool:
    """True for ``SYMBOL/SIDE/TIMEFRAME`` topic names (e.g. ``EUR-USD/BID/1h``) and feature
    topics ``SYMBOL/SIDE/TIMEFRAME.SET`` (``EUR-USD/BID/1h.core``)."""
    return len(topic) <= 80 and _TOPIC.match(topic) is not None


# -- requests ---------------------------------------------------------------------------


class History(msgspec.Struct, tag="history", tag_field="t", forbid_unknown_fields=True):
    topic: str
    start_ms: int | None = None
    end_ms: int | None = None
    last: int | None = None
    id: int = 0
    v: int = PROTOCOL_VERSION


class Snapshot(msgspec.Struct, tag="snapshot", tag_field="t", forbid_unknown_fields=True):
    topic: str
    last: int = 0
    since_seq: int = -1
    from_offset: int = -1
    epoch: str = ""
    id: int = 0
    v: int = PROTOCOL_VERSION


class ListTopics(msgspec.Struct, tag="list", tag_field="t", forbid_unknown_fields=True):
    prefix: str = ""
    id: int = 0
    v: int = PROTOCOL_VERSION


class StatusRequest(msgspec.Struct, tag="status", tag_field="t", forbid_unknown_fields=True):
    id: int = 0
    v: int = PROTOCOL_VERSION


Request = History | Snapshot | ListTopics | StatusRequest

# -- replies ----------------------------------------------------------------------------


class Records(msgspec.Struct, tag="records", tag_field="t"):
    id: int
    topic: str
    epoch: str
    seq: int
    start: int
    count: int
    end: int
    more: bool = False
    v: int = PROTOCOL_VERSION


class FeatureInfo(msgspec.Struct):
    """What a feature topic's records hold (docs/FORMAT.md §11): per bar the bar record and
    ``groups`` feature records of the set's ``columns`` (six a record), written for the
    definition whose crc32 is ``crc``; ``outputs`` are the columns shown to consumers."""

    name: str
    columns: list[str]
    outputs: list[str]
    groups: int
    crc: int


class TopicInfo(msgspec.Struct):
    topic: str
    epoch: str
    seq: int
    count: int
    first_ms: int | None
    last_ms: int | None
    #: A feature topic (``SYMBOL/SIDE/TF.SET``): its set; None for bars.
    features: FeatureInfo | None = None


class Listing(msgspec.Struct, tag="listing", tag_field="t"):
    id: int
    topics: list[TopicInfo]
    v: int = PROTOCOL_VERSION


class TopicStatus(msgspec.Struct):
    length: int  # records published (committed)
    seq: int
    upstream_end: int  # the upstream's committed end (from its heartbeats), -1 unknown
    lag_records: int  # upstream_end - records consumed, 0 when unknown


class Status(msgspec.Struct, tag="status", tag_field="t"):
    id: int
    instance: str
    wall_ms: int
    upstream: str
    upstream_age_s: float  # seconds since the last upstream message (-1: never)
    topics: dict[str, TopicStatus]
    consumers: int  # distinct request peers seen in the last CONSUMER_TTL_S
    subscriptions: int  # live zmq subscriptions on the publish socket
    requests: dict[str, int]
    errors: dict[str, int]
    published: int  # update messages published since start
    v: int = PROTOCOL_VERSION


class Error(msgspec.Struct, tag="error", tag_field="t"):
    id: int
    code: str
    message: str
    v: int = PROTOCOL_VERSION


Reply = Records | Listing | Status | Error

# -- publications -----------------------------------------------------------------------


class Update(msgspec.Struct, tag="update", tag_field="t"):
    epoch: str
    seq: int
    start: int
    count: int
    end: int
    closed_end: int
    wall_ms: int = 0
    v: int = PROTOCOL_VERSION


class Heartbeat(msgspec.Struct, tag="hb", tag_field="t"):
    instance: str
    wall_ms: int
    interval_ms: int
    seqs: dict[str, int] = {}
    v: int = PROTOCOL_VERSION
    hb: int = 0  # this instance's heartbeat count (1, 2, …)
    window: int = 0  # seqs covers the topics that moved in this many intervals; 0: all


Publication = Update | Heartbeat

# -- encoding ---------------------------------------------------------------------------


class _Probe(msgspec.Struct):
    """The few fields every request has, decoded leniently to explain a refusal."""

    t: object = None
    v: object = None
    id: object = 0


_encoder = msgspec.msgpack.Encoder()
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)
_publication_decoder = msgspec.msgpack.Decoder(Publication)
_probe_decoder = msgspec.msgpack.Decoder(_Probe)
_REQUEST_TYPES: Final = ("history", "snapshot", "list", "status")


def encode(msg: Request | Reply | Publication) -> bytes:
    return _encoder.encode(msg)


def decode_request(frame: bytes | memoryview) -> Request:
    """Decode a request header. Raises Malformed with an ERROR_CODES code and a reason."""
    if len(frame) == 0:
        raise Malformed("empty request frame", code="bad-frames")
    if len(frame) > MAX_REQUEST_BYTES:
        raise Malformed(
            f"request of {len(frame)} bytes exceeds {MAX_REQUEST_BYTES}", code="bad-frames"
        )
    try:
        msg: Request = _request_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _explain(frame, e) from None
    if msg.v != PROTOCOL_VERSION:
        raise Malformed(
            f"protocol version {msg.v} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            code="unsupported-version",
            request_id=msg.id,
        )
    return msg


def _explain(frame: bytes | memoryview, error: Exception) -> Malformed:
    try:
        probe = _probe_decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return Malformed(f"not a msgpack map of this protocol: {error}")
    rid = probe.id if isinstance(probe.id, int) and not isinstance(probe.id, bool) else 0
    if probe.v is not None and probe.v != PROTOCOL_VERSION:
        return Malformed(
            f"protocol version {probe.v!r} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            code="unsupported-version",
            request_id=rid,
        )
    if probe.t not in _REQUEST_TYPES:
        return Malformed(
            f"unknown request type t={probe.t!r}; expected one of {', '.join(_REQUEST_TYPES)}",
            code="unknown-type",
            request_id=rid,
        )
    return Malformed(f"{probe.t} request: {error}", code="invalid-field", request_id=rid)


def decode_reply(frame: bytes | memoryview) -> Reply:
    """Decode a reply header (client side). Raises Malformed."""
    msg: Reply = _decode(_reply_decoder, frame, "reply")
    return msg


def decode_publication(frame: bytes | memoryview) -> Publication:
    """Decode a publication header (client side). Raises Malformed."""
    msg: Publication = _decode(_publication_decoder, frame, "publication")
    return msg


def _decode(decoder: msgspec.msgpack.Decoder[Any], frame: bytes | memoryview, what: str) -> Any:
    try:
        msg = decoder.decode(frame)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise Malformed(f"bad {what} header: {e}") from None
    if msg.v != PROTOCOL_VERSION:
        raise Malformed(f"{what} of protocol version {msg.v}", code="unsupported-version")
    return msg
