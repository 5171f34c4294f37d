"""The API's way to the gateway: a bounded pool of request connections, and live streams.

A gateway request connection (``AsyncGatewayClient``: one DEALER) carries one request at a
time, so concurrent HTTP requests each borrow one from the pool (``Pool.client()``) and wait
when all ``size`` are busy — 1,000 concurrent HTTP requests become a queue of at most
``size`` gateway requests, never 1,000 sockets. The wait is bounded (``WAIT_S``): past it
the request is answered 503, never left waiting for ever. A client whose request timed out or failed
is closed and replaced (its socket may hold a late reply). Live streams (SSE) each run their
own ``stream_topics`` on one shared streaming client (one zmq context for all of them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final

from barstream.services.gateway.client import AsyncGatewayClient
from barstream.shared.errors import ApiError, GatewayError

#: Seconds a request waits for the gateway before the API answers 503.
REQUEST_TIMEOUT_S: Final = 5.0
#: Seconds a request waits for a free gateway connection before the API answers 503.
WAIT_S: Final = 30.0


class Pool:
    def __init__(
        self, publish: str, requests: str, size: int, *, timeout_s: float = REQUEST_TIMEOUT_S
    ) -> None:
        self.publish = publish
        self.requests = requests
        self.timeout_s = timeout_s
        self.size = size
        self._idle: asyncio.Queue[AsyncGatewayClient] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(self._new())
        self.streams = AsyncGatewayClient(publish, requests, timeout_s=timeout_s)

    def _new(self) -> AsyncGatewayClient:
        return AsyncGatewayClient(self.publish, self.requests, timeout_s=self.timeout_s)

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[AsyncGatewayClient]:
        """Borrow a request connection; a refusal (GatewayError) leaves it usable, anything
        else (timeout, cancellation) replaces it."""
        try:
            async with asyncio.timeout(WAIT_S):  # not wait_for (3.11 cancel swallowing)
                gw = await self._idle.get()
        except TimeoutError:
            raise ApiError(
                503,
                "busy",
                f"all {self.size} gateway connections (api.gateway_connections) stayed busy "
                f"for {WAIT_S:g}s; retry later",
            ) from None
        healthy = False
        try:
            yield gw
            healthy = True
        except GatewayError:
            healthy = True
            raise
        finally:
            if not healthy:
                gw.close()
                gw = self._new()
            self._idle.put_nowait(gw)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()
        self.streams.close()
