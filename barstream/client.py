"""The consumer's import: ``from barstream.client import GatewayClient``.

The client library of the gateway (``barstream.services.gateway.client``, with its
``follower``, ``driver`` and ``frames`` modules; ``GatewayError`` from ``shared.errors``),
under the name a consumer writes: a sync and an asyncio client that follow topics gap-free
(the Clone pattern), history requests (bars, or bars joined with a feature set's outputs:
``FeatureBarUpdate`` items), and numpy → pandas/Polars conversions. See the
README's "Client in ten lines".
"""

from __future__ import annotations

from barstream.services.gateway.client import (
    AsyncGatewayClient,
    GatewayClient,
    to_pandas,
    to_polars,
)
from barstream.services.gateway.follower import BarUpdate, Position
from barstream.services.gateway.joined import FeatureBarUpdate
from barstream.shared.errors import GatewayError

__all__ = [
    "AsyncGatewayClient",
    "BarUpdate",
    "FeatureBarUpdate",
    "GatewayClient",
    "GatewayError",
    "Position",
    "to_pandas",
    "to_polars",
]
