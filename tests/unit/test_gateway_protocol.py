"""The consumer wire protocol: round trips, versions, refusals with reasons."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from barstream.shared import gateway_protocol as gp
from barstream.shared.errors import Malformed

REQUESTS = [
    gp.History(topic="EUR-USD/BID/1h", start_ms=1, end_ms=2, id=5),
    gp.History(topic="EUR-USD/BID/1h", last=10),
    gp.Snapshot(topic="EUR-USD/ASK/1m", last=3, since_seq=4, from_offset=9, epoch="ab"),
    gp.ListTopics(prefix="EUR-USD/"),
    gp.StatusRequest(id=1),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: type(r).__name__)
def test_request_round_trip(req) -> None:
    assert gp.decode_request(gp.encode(req)) == req


def test_reply_and_publication_round_trip() -> None:
    replies: list[gp.Reply] = [
        gp.Records(id=1, topic="A-B/BID/1m", epoch="e", seq=3, start=0, count=2, end=2, more=True),
        gp.Listing(id=2, topics=[gp.TopicInfo("A-B/BID/1m", "e", 1, 2, 0, 60_000)]),
        gp.Error(id=3, code="bad-range", message="why"),
    ]
    for reply in replies:
        assert gp.decode_reply(gp.encode(reply)) == reply
    pubs: list[gp.Publication] = [
        gp.Update(epoch="e", seq=1, start=0, count=1, end=1, closed_end=0, wall_ms=5),
        gp.Heartbeat(instance="i", wall_ms=1, interval_ms=1000, seqs={"A-B/BID/1m": 4}),
    ]
    for pub in pubs:
        assert gp.decode_publication(gp.encode(pub)) == pub


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", "bad-frames"),
        (b"\x00" * (gp.MAX_REQUEST_BYTES + 1), "bad-frames"),
        (b"\xc1", "malformed"),
        (msgspec.msgpack.encode({"t": "history", "v": 9, "topic": "x"}), "unsupported-version"),
        (msgspec.msgpack.encode({"t": "status", "v": 2}), "unsupported-version"),
        (msgspec.msgpack.encode({"t": "nope", "v": 1}), "unknown-type"),
        (msgspec.msgpack.encode({"t": "history", "v": 1}), "invalid-field"),
    ],
)
def test_refusals_say_why(frame: bytes, code: str) -> None:
    with pytest.raises(Malformed) as e:
        gp.decode_request(frame)
    assert e.value.code == code and str(e.value)
    assert code in gp.ERROR_CODES


def test_refusal_keeps_the_request_id() -> None:
    with pytest.raises(Malformed) as e:
        gp.decode_request(msgspec.msgpack.encode({"t": "history", "v": 1, "id": 42, "last": "x"}))
    assert e.value.request_id == 42


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_the_decoder(frame: bytes) -> None:
    try:
        gp.decode_request(frame)
    except Malformed as e:
        assert e.code in gp.ERROR_CODES


def test_topic_names() -> None:
    assert gp.valid_topic("EUR-USD/BID/1h") and gp.valid_topic("DEU.IDX-EUR/ASK/15m")
    assert not gp.valid_topic("EUR-USD/MID/1h") and not gp.valid_topic("../x")
    assert gp.topic_of("EUR-USD", "BID", "1M") == "EUR-USD/BID/1M"
    assert gp.HEARTBEAT_TOPIC < b"A"  # sorts before, never a prefix of, any topic
