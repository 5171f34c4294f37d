"""Feed protocol: every message round-trips; malformed frames raise Malformed, never crash."""

from __future__ import annotations

import contextlib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barstream.shared import protocol as p
from barstream.shared.errors import Malformed

names = st.text(max_size=20)
ints = st.integers(-(2**63), 2**63 - 1)
u = st.integers(0, 2**62)
marks = st.tuples(st.text(max_size=32), u, u)  # an UpstreamMark: store_id, offset, generation

up_messages = st.one_of(
    st.builds(
        p.Hello,
        name=names,
        conn=u,
        streams=st.dictionaries(names, marks, max_size=4),
        prefixes=st.lists(names, max_size=3),
        credit=u,
    ),
    st.builds(p.Credit, conn=u, n=ints),
    st.builds(p.Bye, conn=u),
)
down_messages = st.one_of(
    st.builds(
        p.Batch,
        conn=u,
        stream=names,
        store_id=names,
        generation=u,
        start=u,
        count=u,
        end=u,
        kind=st.integers(0, 5),
        attachments=u,
        wall_ms=ints,
    ),
    st.builds(
        p.Heartbeat,
        instance=names,
        wall_ms=ints,
        done=st.booleans(),
        ends=st.dictionaries(names, st.tuples(u, u), max_size=4),
    ),
    st.builds(p.Reset, reason=names),
    st.builds(p.Error, code=names, message=names),
)


@settings(max_examples=300, deadline=None)
@given(msg=up_messages)
def test_upward_round_trip(msg) -> None:
    assert p.decode_up(p.encode(msg)) == msg
    with pytest.raises(Malformed):
        p.decode_down(p.encode(msg))  # never mistaken for the other direction


@settings(max_examples=300, deadline=None)
@given(msg=down_messages)
def test_downward_round_trip(msg) -> None:
    assert p.decode_down(p.encode(msg)) == msg
    with pytest.raises(Malformed):
        p.decode_up(p.encode(msg))


@settings(max_examples=500, deadline=None)
@given(frame=st.binary(max_size=200))
def test_garbage_is_malformed_or_valid_never_a_crash(frame: bytes) -> None:
    for decode in (p.decode_up, p.decode_down):
        with contextlib.suppress(Malformed):
            decode(frame)


@settings(max_examples=300, deadline=None)
@given(msg=st.one_of(up_messages, down_messages), data=st.data())
def test_truncated_and_flipped_frames(msg, data) -> None:
    raw = bytearray(p.encode(msg))
    cut = data.draw(st.integers(0, len(raw) - 1))
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = bytearray(raw)
    flipped[i] ^= data.draw(st.integers(1, 255))
    for frame in (bytes(raw[:cut]), bytes(flipped)):
        for decode in (p.decode_up, p.decode_down):
            with contextlib.suppress(Malformed):
                decode(frame)


def enc(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (enc({"t": "credit", "v": 2, "session": 1, "n": 1}), "protocol version 2"),
        (enc({"t": "credit", "session": 1, "n": 1, "v": "1"}), "Expected `int`"),
        (enc({"t": "credit", "v": 1, "session": "one", "n": 1}), "Expected `int`"),
        (enc({"t": "hello", "v": 1, "session": 1}), "missing required field `name`"),
        (
            enc({"t": "hello", "v": 1, "name": "x", "session": 1, "streams": {"k": [1, 2, 3]}}),
            "Expected `str`",
        ),
        (enc({"t": "nope", "v": 1}), "Invalid value 'nope'"),
        (enc({"v": 1, "session": 1}), "missing required field `t`"),
        (enc([1, 2, 3]), "Expected `object`"),
        (b"\xc1", "invalid"),
    ],
)
def test_malformed_upward(frame: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        p.decode_up(frame)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (enc({"t": "batch", "v": 1, "session": 1}), "missing required field"),
        (
            enc({"t": "hb", "v": 1, "instance": "i", "wall_ms": 0, "ends": {"k": [1]}}),
            "Expected `array` of length 2",
        ),
        (enc({"t": "reset", "v": 0, "reason": "x"}), "protocol version 0"),
        (enc({"t": "hello", "v": 1, "name": "x", "session": 1}), "Invalid value 'hello'"),
    ],
)
def test_malformed_downward(frame: bytes, why: str) -> None:
    with pytest.raises(Malformed, match=why):
        p.decode_down(frame)


def test_oversized_header_is_malformed_before_decoding() -> None:
    big = b"\x00" * (p.MAX_HEADER_BYTES + 1)
    for decode in (p.decode_up, p.decode_down):
        with pytest.raises(Malformed, match="exceeds"):
            decode(big)
        with pytest.raises(Malformed, match="exceeds"):
            decode(memoryview(big))


def test_defaults_and_version() -> None:
    hello = p.decode_up(enc({"t": "hello", "v": 1, "name": "x", "session": 3}))
    assert isinstance(hello, p.Hello)
    assert hello.prefixes == [""] and hello.credit == 64 and hello.streams == {}
    assert p.Batch(1, "k", "id", 0, 0, 0, 0).v == p.PROTOCOL_VERSION == 1


def test_mark_is_a_compact_array() -> None:
    hello = msgspec.msgpack.decode(enc(p.Hello(name="x", conn=1, streams={"k": ("ab", 5, 2)})))
    assert hello["streams"]["k"] == ["ab", 5, 2]
