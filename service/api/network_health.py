"""Each network's health in the standard gRPC health service: ``balances.v1.network.<name>``.

``NetworkHealth`` (the use case) decides; this only says it the gRPC way.  The
overall status (service ``""``) is ``NOT_SERVING`` only when no network can be
read; shutdown sets everything ``NOT_SERVING`` and freezes it (grpc's servicer
ignores later changes).
"""

from __future__ import annotations

from collections.abc import Mapping

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

__all__ = ["NetworkHealthReporter", "network_service_name"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def network_service_name(network: str) -> str:
    """The health service name of a network, e.g. ``balances.v1.network.polygon``."""
    return f"balances.v1.network.{network}"


class NetworkHealthReporter:
    """A ``NetworkStatusListener`` that sets the health servicer's statuses."""

    def __init__(self, health: health_aio.HealthServicer) -> None:
        self._health = health

    async def networks_changed(self, serving: Mapping[str, bool]) -> None:
        for network, ok in serving.items():
            await self._health.set(network_service_name(network), _SERVING if ok else _NOT_SERVING)
        await self._health.set("", _SERVING if any(serving.values()) else _NOT_SERVING)
