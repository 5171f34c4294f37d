"""A hostile HTTP upstream for tests: a raw-socket server on 127.0.0.1 whose every answer to
a candle URL is chosen by the test — a good day, or one of ``KINDS``: what a broken proxy,
a hostile peer or an unlucky network sends (huge bodies, gzip/deflate bombs, slow drips,
resets mid-body, wrong Content-Length, truncated JSON, wrong types, garbage).

``HostileServer(plan)``: ``plan(path, n)`` gives the kind of the ``n``-th request (0-based) for
``path``, ``"good"`` for the real body. Good bodies are the fake upstream's
(``FakeUpstream.reply``: the generator, or the recorded real responses where given). Every
answer carries ``Date`` = ``server_now_ms`` (the downloader follows the upstream's clock).
Each kind's bytes are bounded (a "huge" body stops after ``HUGE_BYTES``, a drip after
``DRIP_S``), so a client that does not stop reading still ends, and the test with it.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip
import random
import socket
import socketserver
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from functools import cache
from typing import Final

from barstream.fake.upstream import FakeUpstream

#: What a hostile upstream sends, besides good days. Each is refused by the downloader
#: (retried within its attempts, then a gap), never cached.
KINDS: Final = (
    "status_500",
    "status_503",
    "status_429",
    "reset_before",  # connection reset before any answer
    "reset_mid_body",  # half the body, then a TCP RST
    "close_mid_body",  # half the body, then a clean close (Content-Length says more)
    "length_long",  # Content-Length 1000 bytes more than sent, then close
    "length_short",  # Content-Length half the body: the JSON is cut
    "length_huge",  # Content-Length of 5 GB
    "huge_chunked",  # chunked, 64 KiB chunks of candle-ish bytes, no end (HUGE_BYTES)
    "huge_close",  # no length, bytes until close (HUGE_BYTES)
    "gzip_bomb",  # a small gzip body inflating to BOMB_MIB
    "gzip_multi_bomb",  # many gzip members, together past the limit
    "deflate_bomb",  # zlib-wrapped deflate inflating to BOMB_MIB
    "raw_deflate_bomb",  # raw deflate (no zlib wrap) inflating to BOMB_MIB
    "gzip_garbage",  # Content-Encoding gzip, random bytes
    "gzip_truncated",  # the gzip body cut in half
    "brotli",  # Content-Encoding br (never asked for)
    "drip_body",  # a byte every DRIP_GAP_S
    "drip_headers",  # the status line, then a header byte every DRIP_GAP_S
    "silent",  # reads the request, never answers (until DRIP_S)
    "truncated_json",  # a correct Content-Length for half the JSON
    "wrong_types",  # candle keys whose values are not arrays
    "json_array",  # JSON, but a list
    "html",  # a proxy's error page
    "empty",  # 200 with no body
    "garbage_body",  # 200 with random bytes
    "garbage_status",  # a status line that is not HTTP
    "garbage_response",  # random bytes instead of an HTTP answer
    "bad_chunks",  # chunked with a chunk size that is not hex
)
HUGE_BYTES: Final = 256 << 20
DRIP_GAP_S: Final = 0.2
DRIP_S: Final = 30.0
CHUNK: Final = 1 << 16


@cache
def bomb(kind: str, mib: int) -> bytes:
    """A valid ``kind`` (gzip, zlib or raw deflate) stream of ``mib`` MiB of zeros, made from
    one compressed MiB repeated (each block starts afresh after a full flush)."""
    zeros = b"\0" * (1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush(zlib.Z_FINISH)  # the final (empty) block
    body = block * mib + end
    crc = adler = 0
    adler = 1
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
        adler = zlib.adler32(zeros, adler)
    if kind == "raw":
        return body
    if kind == "zlib":
        return b"\x78\xda" + body + struct.pack(">I", adler)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + body + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)


class HostileServer:
    """Serve candle URLs as ``plan`` says (see the module docstring); a context manager."""

    def __init__(
        self,
        plan: Callable[[str, int], str],
        fake: FakeUpstream,
        *,
        server_now_ms: int,
        seed: int = 1,
        bomb_mib: int = 256,
    ) -> None:
        self.plan = plan
        self.fake = fake
        self.server_now_ms = server_now_ms
        self.bomb_mib = bomb_mib
        self.rng = random.Random(seed)
        self.requests: Counter[str] = Counter()  # path → requests
        self.served: Counter[str] = Counter()  # kind → answers
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileServer:
        for kind in ("gzip", "zlib", "raw"):
            bomb(kind, self.bomb_mib)  # made before the first request, not during one
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    # -- one connection -------------------------------------------------------------------

    def _handle(self, sock: socket.socket) -> None:
        sock.settimeout(DRIP_S)
        f = sock.makefile("rb")
        with contextlib.suppress(OSError, ValueError):
            while not self.stopping.is_set():
                line = f.readline(65536)
                if not line:
                    return
                path = line.split(b" ")[1].decode("latin-1") if b" " in line else "/"
                headers = {}
                while True:
                    h = f.readline(65536)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                with self.lock:
                    n = self.requests[path]
                    self.requests[path] += 1
                    kind = self.plan(path, n)
                    self.served[kind] += 1
                    rng = random.Random(self.rng.getrandbits(64))
                if not self._answer(
                    sock, kind, path, "gzip" in headers.get("accept-encoding", ""), rng
                ):
                    return  # the connection is not reusable after this answer

    def _good(self, path: str) -> tuple[int, bytes]:
        reply = self.fake.reply(path)
        return reply.status, reply.body

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        date = email.utils.formatdate(self.server_now_ms / 1000, usegmt=True)
        lines = [f"HTTP/1.1 {status} X", f"Date: {date}", "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, sock: socket.socket, status: int, body: bytes, **headers: str) -> None:
        headers.setdefault("Content-Length", str(len(body)))
        sock.sendall(self._head(status, headers) + body)

    def _drip(self, sock: socket.socket, data: bytes) -> None:
        until = time.monotonic() + DRIP_S
        for i in range(len(data)):
            if self.stopping.is_set() or time.monotonic() > until:
                return
            sock.sendall(data[i : i + 1])
            time.sleep(DRIP_GAP_S)

    def _answer(
        self, sock: socket.socket, kind: str, path: str, gz: bool, rng: random.Random
    ) -> bool:
        """Write the answer of ``kind``; True when the connection may serve another request."""
        status, body = self._good(path)
        if kind == "good":
            if gz:
                self._send(
                    sock, status, gzip.compress(body, mtime=0), **{"Content-Encoding": "gzip"}
                )
            else:
                self._send(sock, status, body)
            return True
        half = body[: len(body) // 2]
        noise = rng.randbytes(rng.randint(1, 4096))
        if kind.startswith("status_"):
            extra = {"Retry-After": "0"} if kind == "status_429" else {}
            self._send(sock, int(kind[7:]), b'{"error":"hostile"}', **extra)
            return True
        if kind in ("reset_before", "reset_mid_body"):
            if kind == "reset_mid_body":
                sock.sendall(self._head(200, {"Content-Length": str(len(body))}) + half)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        if kind == "close_mid_body":
            sock.sendall(self._head(200, {"Content-Length": str(len(body))}) + half)
        elif kind == "length_long":
            self._send(sock, 200, body, **{"Content-Length": str(len(body) + 1000)})
        elif kind == "length_short":
            self._send(sock, 200, body, **{"Content-Length": str(len(half))})
        elif kind == "length_huge":
            self._send(sock, 200, body, **{"Content-Length": str(5 << 30)})
        elif kind == "huge_chunked":
            sock.sendall(self._head(200, {"Transfer-Encoding": "chunked"}))
            piece = (b"1," * (CHUNK // 2))[:CHUNK]
            for _ in range(HUGE_BYTES // CHUNK):
                if self.stopping.is_set():
                    break
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        elif kind == "huge_close":
            sock.sendall(self._head(200, {}) + b'{"times":[')
            for _ in range(HUGE_BYTES // CHUNK):
                if self.stopping.is_set():
                    break
                sock.sendall(b"0," * (CHUNK // 2))
        elif kind in ("gzip_bomb", "deflate_bomb", "raw_deflate_bomb"):
            fmt = {"gzip_bomb": "gzip", "deflate_bomb": "zlib", "raw_deflate_bomb": "raw"}[kind]
            coding = "gzip" if fmt == "gzip" else "deflate"
            self._send(sock, 200, bomb(fmt, self.bomb_mib), **{"Content-Encoding": coding})
            return True
        elif kind == "gzip_multi_bomb":
            member = bomb("gzip", 4)
            self._send(sock, 200, member * 8, **{"Content-Encoding": "gzip"})
            return True
        elif kind == "gzip_garbage":
            self._send(sock, 200, noise, **{"Content-Encoding": "gzip"})
            return True
        elif kind == "gzip_truncated":
            z = gzip.compress(body, mtime=0)
            self._send(sock, 200, z[: len(z) // 2], **{"Content-Encoding": "gzip"})
            return True
        elif kind == "brotli":
            self._send(sock, 200, noise, **{"Content-Encoding": "br"})
            return True
        elif kind == "drip_body":
            sock.sendall(self._head(200, {"Content-Length": str(len(body))}))
            self._drip(sock, body)
        elif kind == "drip_headers":
            self._drip(sock, self._head(200, {"Content-Length": str(len(body))}))
        elif kind == "silent":
            self.stopping.wait(DRIP_S)
        elif kind == "truncated_json":
            self._send(sock, 200, half)
            return True
        elif kind == "wrong_types":
            bad = rng.choice(
                [
                    b'{"times":"0,1,2","opens":[]}',
                    b'{"times":[0,1],"opens":{"a":1}}',
                    b'{"times":7}',
                ]
            )
            self._send(sock, 200, bad)
            return True
        elif kind == "json_array":
            self._send(sock, 200, b"[1,2,3]")
            return True
        elif kind == "html":
            self._send(sock, 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
            return True
        elif kind == "empty":
            self._send(sock, 200, b"")
            return True
        elif kind == "garbage_body":
            self._send(sock, 200, noise)
            return True
        elif kind == "garbage_status":
            sock.sendall(b"HTTQ/9 two hundred\r\n\r\n" + noise)
        elif kind == "garbage_response":
            sock.sendall(noise)
        elif kind == "bad_chunks":
            sock.sendall(self._head(200, {"Transfer-Encoding": "chunked"}) + b"zz\r\n" + half)
        else:
            raise ValueError(f"unknown hostile kind {kind!r}")
        return False
