"""``balances health``: one call to a server's gRPC health service, for container health checks.

A probe with no tool of its own to install (``grpc_health_probe`` is a separate
binary): the image's ``HEALTHCHECK`` runs ``balances health``.  Plaintext gRPC:
health needs no API key, and a server with ``[tls]`` is probed by its platform's
own TLS-aware check instead.
"""

from __future__ import annotations

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check_health"]


async def check_health(target: str, service: str = "", timeout: float = 3.0) -> str:
    """The status name (``SERVING``, ``NOT_SERVING``, ...), or why there is none."""
    async with aio.insecure_channel(target) as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except aio.AioRpcError as exc:
            return f"no answer from {target}: {exc.code().name}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
