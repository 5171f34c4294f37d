"""The transformer's decode helper process: ``python -m
barstream.services.transformer.decode_process <memfd>`` (started by ``decode_pool.DecodeHelper``).

It serves decode requests on its stdin/stdout until stdin closes, decoding each with
``bulk.decode_days``; it keeps no state but the mapping of the memfd and imports only numpy,
msgspec and the decoder.

Wire (the helper's stdin/stdout pipes, enlarged to 1 MiB where the OS allows; no pickle;
docs/PROTOCOL.md draws it too): once imported the helper writes ``R``. A request is ``<QQ``
(header length, bodies length), a msgpack header ``[symbol, side, capacity, [[day_ms, live,
src_offset, body_len], ...]]`` and the bodies back to back. The helper writes the decoded
records back to back into a shared memory file (memfd, ``capacity`` bytes, grown by the
transformer before the request) and answers ``<Q`` + a msgpack list with each day's record
count, or -1 when the day failed to decode. The answer's arrays are zero-copy views of the
memfd, valid until the next request.

Frames (also in docs/PROTOCOL.md)::

    helper → transformer, once:  READY ("R")
    request:  REQUEST_HEAD <QQ (header length, bodies length) | msgpack header | bodies
    answer:   ANSWER_HEAD <Q (length) | msgpack [count per day, -1 = not decoded]
"""

from __future__ import annotations

import mmap
import struct
import sys
from typing import IO, Final

import msgspec
import numpy as np

from barstream.services.transformer.bulk import decode_days
from barstream.shared.record import RECORD_DTYPE, RECORD_SIZE

#: The helper's first byte: it has imported everything and waits for requests.
READY: Final = b"R"
#: A request starts with (header length, bodies length); an answer with its length.
REQUEST_HEAD: Final = struct.Struct("<QQ")
ANSWER_HEAD: Final = struct.Struct("<Q")


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if data is None or len(data) != n:
        raise EOFError(f"pipe closed ({0 if data is None else len(data)} of {n} bytes)")
    return data


class _Request(msgspec.Struct, array_like=True):
    symbol: str
    side: str
    capacity: int
    items: list[tuple[int, bool, int, int]]


def helper_main(memfd: int) -> int:
    """Serve decode requests on stdin/stdout until stdin closes."""
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    decoder = msgspec.msgpack.Decoder(_Request)
    mapped: mmap.mmap | None = None
    capacity = 0
    stdout.write(READY)
    stdout.flush()
    while True:
        head = stdin.read(REQUEST_HEAD.size)
        if len(head) < REQUEST_HEAD.size:
            return 0  # the transformer closed the pipe: done
        header_len, bodies_len = REQUEST_HEAD.unpack(head)
        req = decoder.decode(_read_exact(stdin, header_len))
        bodies = _read_exact(stdin, bodies_len)
        if req.capacity != capacity:
            if mapped is not None:
                mapped.close()
            capacity = req.capacity
            mapped = mmap.mmap(memfd, capacity, access=mmap.ACCESS_WRITE)
        assert mapped is not None
        counts: list[int] = []
        pos = 0
        at = 0
        bodies_each: list[bytes] = []
        for *_, n in req.items:
            bodies_each.append(bodies[at : at + n])
            at += n
        decoded: list[np.ndarray | Exception]
        try:
            decoded = list(
                decode_days(
                    bodies_each,
                    symbol=req.symbol,
                    side=req.side,
                    day_ms=[d for d, _, _, _ in req.items],
                    live=[lv for _, lv, _, _ in req.items],
                    src_offsets=[o for _, _, o, _ in req.items],
                )
            )
        except Exception as e:  # the transformer decodes them again and reports any error
            decoded = [e] * len(bodies_each)
        for records in decoded:
            if not isinstance(records, np.ndarray):
                counts.append(-1)  # the transformer decodes it again and reports the error
                continue
            size = len(records) * RECORD_SIZE
            if pos + size > capacity:
                counts.append(-1)
                continue
            if size:
                np.frombuffer(mapped, dtype=RECORD_DTYPE, count=len(records), offset=pos)[:] = (
                    records
                )
            pos += size
            counts.append(len(records))
        answer = msgspec.msgpack.encode(counts)
        stdout.write(ANSWER_HEAD.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    from barstream.shared import memory

    memory.tune()
    sys.exit(helper_main(int(sys.argv[1])))
