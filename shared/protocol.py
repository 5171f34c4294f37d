"""The feed wire protocol between barstream services (upstream ROUTER ⇄ downstream DEALER).

Every message is one ZeroMQ multipart message. Frame 0 is a control header: a msgspec
msgpack map tagged by ``t`` and carrying the protocol version ``v``. Records travel as raw
little-endian numpy bytes in their own frame — never msgpack-encoded one by one.

Downstream → upstream (DEALER → ROUTER; the ROUTER sees an identity frame first)::

    ┌────────────────────────────────────────────────────────────────────────────┐
    │ {t:"hello", v, name, session, streams:{key:[store_id,offset,generation]},  │
    │  prefixes:[...], credit}                                                   │  subscribe / resume
    ├────────────────────────────────────────────────────────────────────────────┤
    │ {t:"credit", v, session, n}                                                │  n more batches may
    │                                                                            │  be sent; n=0: keepalive
    ├────────────────────────────────────────────────────────────────────────────┤
    │ {t:"bye", v, session}                                                      │  leaving (drain mode)
    └────────────────────────────────────────────────────────────────────────────┘

Upstream → downstream::

    ┌──────────────────────────────────────────────────────────────┬───────────┬─────────┐
    │ {t:"batch", v, session, stream, store_id, generation,        │ records   │ attach- │
    │  start, count, end, kind, attachments, wall_ms}              │ count×64 B│ ments…  │
    └──────────────────────────────────────────────────────────────┴───────────┴─────────┘
      "From offset ``start`` on, store ``stream`` now reads these ``count`` records."
      start == the downstream's offset: growth. start < that offset: a rewind (provisional
      update or revision) — the downstream drops what it derived from [start, ...) first.
      ``end`` is the upstream's committed end (for lag); ``kind`` says which dtype the
      records are (1 bars, 2 journal: shared/record.py); ``attachments`` extra frames carry
      one opaque body per record (the downloader's raw responses), else 0.

    ┌────────────────────────────────────────────────────────────────────────────┐
    │ {t:"hb", v, instance, wall_ms, done, ends:{key:[end, generation]}}         │  every HEARTBEAT_INTERVAL_S
    ├────────────────────────────────────────────────────────────────────────────┤
    │ {t:"reset", v, reason}       the upstream does not know this peer: say hello │
    ├────────────────────────────────────────────────────────────────────────────┤
    │ {t:"error", v, code, message}  a request was refused (bad version, …)      │
    └────────────────────────────────────────────────────────────────────────────┘

Names: ``session`` on the wire is the *connection number* (``conn`` in code: chosen by the
client, +1 per connection) — not a trading session; the wire keeps the older name. A
``stream`` (batch) and the keys of ``streams``/``ends`` are store keys
``SYMBOL/SIDE/TIMEFRAME``; each ``streams`` value is an ``UpstreamMark``
(shared/checkpoint.py) as a compact ``[store_id, offset, generation]`` array. A hello
without ``credit`` gets 64 (``FeedClient`` always sends its window, 32 by default).

Flow control is credit-based: the upstream sends a batch only while the peer has credit,
so a slow downstream makes the upstream wait (its store is the buffer) and nothing is
dropped. Batches echo the connection number of the hello they answer; a downstream drops
batches of an older connection (stale after a reconnect). docs/PROTOCOL.md has the rules.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from barstream.shared.errors import Malformed

PROTOCOL_VERSION: Final = 1
#: Largest control header accepted (bytes); larger frames are malformed.
MAX_HEADER_BYTES: Final = 1 << 20
#: The server heartbeats each peer this often; the client sends a keepalive at least as often.
HEARTBEAT_INTERVAL_S: Final = 1.0
#: No message from the other side for this long: the peer is gone / the upstream stalled.
PEER_TIMEOUT_S: Final = 5.0


class Hello(msgspec.Struct, tag="hello", tag_field="t"):
    name: str
    conn: int = msgspec.field(name="session")
    #: key → the downstream's UpstreamMark of it, as [store_id, offset, generation]
    streams: dict[str, tuple[str, int, int]] = {}
    prefixes: list[str] = msgspec.field(default_factory=lambda: [""])
    credit: int = 64
    v: int = PROTOCOL_VERSION


class Credit(msgspec.Struct, tag="credit", tag_field="t"):
    conn: int = msgspec.field(name="session")
    n: int
    v: int = PROTOCOL_VERSION


class Bye(msgspec.Struct, tag="bye", tag_field="t"):
    conn: int = msgspec.field(name="session")
    v: int = PROTOCOL_VERSION


class Batch(msgspec.Struct, tag="batch", tag_field="t"):
    conn: int = msgspec.field(name="session")
    stream: str
    store_id: str
    generation: int
    start: int
    count: int
    end: int
    kind: int = 1
    attachments: int = 0
    wall_ms: int = 0
    v: int = PROTOCOL_VERSION


class Heartbeat(msgspec.Struct, tag="hb", tag_field="t"):
    instance: str
    wall_ms: int
    done: bool = False
    ends: dict[str, tuple[int, int]] = {}
    v: int = PROTOCOL_VERSION


class Reset(msgspec.Struct, tag="reset", tag_field="t"):
    reason: str
    v: int = PROTOCOL_VERSION


class Error(msgspec.Struct, tag="error", tag_field="t"):
    code: str
    message: str
    v: int = PROTOCOL_VERSION


Upward = Hello | Credit | Bye
Downward = Batch | Heartbeat | Reset | Error

_encoder = msgspec.msgpack.Encoder()
_up = msgspec.msgpack.Decoder(Upward)
_down = msgspec.msgpack.Decoder(Downward)


def encode(msg: Hello | Credit | Bye | Batch | Heartbeat | Reset | Error) -> bytes:
    return _encoder.encode(msg)


def decode_up(frame: bytes | memoryview) -> Hello | Credit | Bye:
    """Decode a downstream→upstream header. Raises Malformed."""
    msg: Hello | Credit | Bye = _decode(_up, frame)
    return msg


def decode_down(frame: bytes | memoryview) -> Batch | Heartbeat | Reset | Error:
    """Decode an upstream→downstream header. Raises Malformed."""
    msg: Batch | Heartbeat | Reset | Error = _decode(_down, frame)
    return msg


def _decode(decoder: msgspec.msgpack.Decoder[Any], frame: bytes | memoryview) -> Any:
    if len(frame) > MAX_HEADER_BYTES:
        raise Malformed(f"header of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        msg = decoder.decode(frame)
    except (msgspec.DecodeError, ValueError) as e:  # ValueError: invalid UTF-8 in a str
        raise Malformed(str(e)) from None
    if msg.v != PROTOCOL_VERSION:
        raise Malformed(f"protocol version {msg.v}, expected {PROTOCOL_VERSION}")
    return msg
