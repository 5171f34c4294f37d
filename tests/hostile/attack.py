"""Attackers of the socket fuzz tests: each connects to one socket of a running service
and sends ``Fuzz`` messages, bounded in count and time, reading (and dropping) replies
so the attacker's own queues stay small. Every attacker returns how many it sent."""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from barstream.shared import protocol as p
from tests.hostile.fuzz import Fuzz

Ctx = zmq.Context[zmq.Socket[bytes]]


def _socket(ctx: Ctx, kind: int, endpoint: str) -> zmq.Socket[bytes]:
    sock: zmq.Socket[bytes] = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(endpoint)
    return sock


def _drain(sock: zmq.Socket[bytes]) -> None:
    for _ in range(10_000):
        try:
            sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return


def flood(
    ctx: Ctx,
    kind: int,
    endpoint: str,
    make: Callable[[], list[bytes]],
    count: int,
    deadline_s: float,
) -> int:
    """``count`` messages from ``make()`` on one socket of ``kind`` (sends that time out
    are not counted); replies read and dropped."""
    sock = _socket(ctx, kind, endpoint)
    end = time.monotonic() + deadline_s
    sent = 0
    try:
        for i in range(count):
            if i % 128 == 0:
                _drain(sock)
                if time.monotonic() > end:
                    break
            try:
                sock.send_multipart(make())
                sent += 1
            except zmq.Again:
                continue
        _drain(sock)
    finally:
        sock.close(linger=0)
    return sent


def feed_router(ctx: Ctx, endpoint: str, fuzz: Fuzz, count: int, deadline_s: float) -> int:
    return flood(ctx, zmq.DEALER, endpoint, fuzz.feed_up, count, deadline_s)


def gateway_router(
    ctx: Ctx, endpoint: str, fuzz: Fuzz, topic: str, count: int, deadline_s: float
) -> int:
    return flood(ctx, zmq.DEALER, endpoint, lambda: fuzz.gw_request(topic), count, deadline_s)


def xpub(ctx: Ctx, endpoint: str, fuzz: Fuzz, count: int, deadline_s: float) -> int:
    """Raw (un)subscription frames and junk from an XSUB (it reads nothing it is sent)."""
    sock = _socket(ctx, zmq.XSUB, endpoint)
    end = time.monotonic() + deadline_s
    sent = 0
    try:
        for i in range(count):
            if i % 128 == 0:
                _drain(sock)
                if time.monotonic() > end:
                    break
            try:
                sock.send(fuzz.subscription())
                sent += 1
            except zmq.Again:
                continue
    finally:
        sock.close(linger=0)
    return sent


def connect_flood(ctx: Ctx, endpoint: str, fuzz: Fuzz, kind: int, count: int) -> int:
    """``count`` connections, each sending one hostile message and closing at once."""
    sent = 0
    for _ in range(count):
        sock = _socket(ctx, kind, endpoint)
        try:
            if kind == zmq.DEALER:
                sock.send_multipart(fuzz.feed_up() if fuzz.rng.random() < 0.5 else [b"\xc1"])
            else:
                sock.send(fuzz.subscription())
            sent += 1
        except zmq.Again:
            pass
        finally:
            sock.close(linger=0)
    return sent


class Idle:
    """Sockets that hold resources and never read: a DEALER that says a valid hello and
    never returns credit (it is sent one window, then forgotten after PEER_TIMEOUT_S) and
    a subscriber of every topic that never reads (its queue stops at the XPUB's HWM)."""

    def __init__(self, ctx: Ctx) -> None:
        self.ctx = ctx
        self.socks: list[zmq.Socket[bytes]] = []

    def no_credit(self, endpoint: str) -> None:
        sock = _socket(self.ctx, zmq.DEALER, endpoint)
        sock.setsockopt(zmq.RCVHWM, 10)
        sock.send(p.encode(p.Hello(name="never-credits", conn=1, credit=64)))
        self.socks.append(sock)

    def non_reader(self, endpoint: str) -> None:
        sock = _socket(self.ctx, zmq.SUB, endpoint)
        sock.setsockopt(zmq.RCVHWM, 10)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.socks.append(sock)

    def close(self) -> None:
        for sock in self.socks:
            sock.close(linger=0)
