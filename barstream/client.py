"""The consumer's import: ``from barstream.client import GatewayClient``.

The client library of the gateway (``barstream.services.gateway.client``), under the name a
consumer writes: a sync and an asyncio client that follow topics gap-free (the Clone
pattern), history requests, and numpy → pandas/Polars conversions. See the README's
"Client in ten lines".
"""

from __future__ import annotations

from barstream.services.gateway.client import (
    AsyncGatewayClient,
    BarUpdate,
    GatewayClient,
    GatewayError,
    to_pandas,
    to_polars,
)

__all__ = [
    "AsyncGatewayClient",
    "BarUpdate",
    "GatewayClient",
    "GatewayError",
    "to_pandas",
    "to_polars",
]
