"""http_body.decode_body: Content-Encoding undone exactly as the standard library would, within
a byte limit (a bomb is refused at the limit, a body of exactly the limit is taken); the new
configuration keys are validated."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from barstream.services.downloader.http_body import BodyRefused, decode_body
from barstream.shared.config import from_dict
from barstream.shared.errors import ConfigError
from tests.support.hostile_http import bomb

BODY = random.Random(3).randbytes(5000) + b'{"times":[0,1,1]}' * 200


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY)),
        ("x-gzip", gzip.compress(BODY)),
        ("gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two members
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
        ("gzip, gzip", gzip.compress(gzip.compress(BODY))),
        ("identity, gzip", gzip.compress(BODY)),
    ],
)
def test_codings_decode_like_the_standard_library(encoding: str, data: bytes) -> None:
    assert decode_body(data, encoding, len(BODY)) == BODY


def test_the_limit_is_inclusive_and_a_bomb_stops_there() -> None:
    data = gzip.compress(BODY)
    assert decode_body(data, "gzip", len(BODY)) == BODY
    with pytest.raises(BodyRefused) as e:
        decode_body(data, "gzip", len(BODY) - 1)
    assert e.value.kind == "oversized" and "downloader.max_body_bytes" in str(e.value)
    for kind, coding in (("gzip", "gzip"), ("zlib", "deflate"), ("raw", "deflate")):
        big = bomb(kind, 64)
        with pytest.raises(BodyRefused) as e:
            decode_body(big, coding, 1 << 20)
        assert e.value.kind == "oversized", coding


def test_bombs_are_valid_streams() -> None:
    """The test bombs are what they claim: a real decoder inflates them whole."""
    assert gzip.decompress(bomb("gzip", 3)) == b"\0" * (3 << 20)
    assert zlib.decompress(bomb("zlib", 3)) == b"\0" * (3 << 20)
    assert zlib.decompress(bomb("raw", 3), -15) == b"\0" * (3 << 20)


@pytest.mark.parametrize(
    ("encoding", "data", "kind"),
    [
        ("gzip", gzip.compress(BODY)[:-20], "truncated"),
        ("gzip", b"not gzip at all", "truncated"),
        ("gzip", gzip.compress(BODY) + b"trailing", "truncated"),
        ("deflate", b"\x00\x01garbage", "truncated"),
        ("br", b"\x0b\x02\x80", "encoding"),
        ("zstd", b"(\xb5/\xfd", "encoding"),
    ],
)
def test_bad_codings_are_refused(encoding: str, data: bytes, kind: str) -> None:
    with pytest.raises(BodyRefused) as e:
        decode_body(data, encoding, 1 << 20)
    assert e.value.kind == kind


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("downloader", "max_body_bytes", 100),
        ("downloader", "max_body_bytes", 2 << 30),
        ("transformer", "decode_helper_timeout_s", 0),
        ("transformer", "decode_helper_timeout_s", -1.0),
        ("transformer", "decode_helper_timeout_per_day_s", -0.1),
    ],
)
def test_new_keys_are_validated(section: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({section: {key: value}})
    assert f"{section}.{key}" in str(e.value)


def test_new_keys_defaults() -> None:
    cfg = from_dict({})
    assert cfg.downloader.max_body_bytes == 16 << 20
    assert cfg.transformer.decode_helper_timeout_s == 2.0
