"""Wiring: the composition root, the gRPC server, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from balances.v1 import balances_pb2, balances_pb2_grpc
from service.api.balances_servicer import BalancesServicer
from service.api.interceptors import ErrorInterceptor
from service.balances import BalanceQueries
from service.cache import MemorySnapshotCache
from service.chain.reader import ChainReader
from service.chain.rpc import RpcClient
from service.config import Settings
from service.directory.base import WalletDirectory
from service.directory.sqlite import SqliteWalletDirectory
from service.gateway.app import GatewayLimits
from service.gateway.serve import RunningGateway, start_gateway

__all__ = [
    "API_SERVICES",
    "Components",
    "ServingPorts",
    "build_components",
    "create_server",
    "serve",
]

log = logging.getLogger(__name__)

# The API services this server implements; reflection and the REST shim use the same list.
API_SERVICES = (balances_pb2.DESCRIPTOR.services_by_name["BalancesService"],)
BALANCES_SERVICE = API_SERVICES[0].full_name


@dataclass(frozen=True)
class ServingPorts:
    grpc: int
    rest: int | None


@dataclass
class Components:
    """Everything the servicers need, built once from settings; closed with ``aclose``."""

    settings: Settings
    directory: WalletDirectory
    rpc_clients: list[RpcClient]
    readers: dict[str, ChainReader]
    cache: MemorySnapshotCache
    queries: BalanceQueries

    async def aclose(self) -> None:
        for client in self.rpc_clients:
            await client.aclose()
        await self.cache.aclose()
        await self.directory.close()


async def build_components(settings: Settings) -> Components:
    """Open the directory, connect to every network and check it is the configured chain."""
    rpc_clients = [
        RpcClient(n.name, n.rpc_urls, settings.rpc_timeout_seconds) for n in settings.networks
    ]
    readers = {
        n.name: ChainReader(n, client)
        for n, client in zip(settings.networks, rpc_clients, strict=True)
    }
    directory: WalletDirectory | None = None
    try:
        await _prepare_all(list(readers.values()))
        for name, reader in readers.items():
            if not reader.uses_multicall:
                log.warning("network %s: no Multicall3 code; using JSON-RPC batches", name)
        directory = await SqliteWalletDirectory.open(settings.directory_path)
    except BaseException:
        for client in rpc_clients:
            await client.aclose()
        raise
    cache = MemorySnapshotCache(settings.cache_ttl_seconds)
    queries = BalanceQueries(
        directory,
        readers,
        {n.name: n.tokens for n in settings.networks},
        cache,
        base_currency=settings.base_currency,
        base_currency_digits=settings.base_currency_digits,
        read_timeout=settings.rpc_timeout_seconds,
    )
    return Components(settings, directory, rpc_clients, readers, cache, queries)


async def _prepare_all(readers: list[ChainReader]) -> None:
    """Check every network concurrently; the first failure cancels the other checks.

    With a bare ``gather`` the other checks would keep running while their
    clients are closed, and log misleading failures for healthy networks.
    """
    tasks = [asyncio.ensure_future(reader.prepare()) for reader in readers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def create_server(
    components: Components, listen: str
) -> tuple[aio.Server, int, health_aio.HealthServicer]:
    """A configured, not yet started server, the port it bound, and its health servicer."""
    server = aio.server(interceptors=[ErrorInterceptor()])
    balances_pb2_grpc.add_BalancesServiceServicer_to_server(
        BalancesServicer(components.queries, components.settings.base_currency_digits), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *(service.full_name for service in API_SERVICES),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    return server, port, health


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[ServingPorts], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``): then NOT_SERVING, drain, close."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    components = await build_components(settings)
    gateway: RunningGateway | None = None
    try:
        server, port, health = create_server(components, settings.listen)
        await server.start()
        for service in ("", *(s.full_name for s in API_SERVICES)):
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving gRPC on port %d", port)
        if settings.rest is not None:
            gateway = await start_gateway(
                f"127.0.0.1:{port}",
                settings.rest.listen,
                API_SERVICES,
                GatewayLimits(
                    max_body_bytes=settings.rest.max_body_bytes,
                    body_read_timeout_seconds=settings.rest.body_read_timeout_seconds,
                    default_timeout_seconds=settings.rest.default_timeout_seconds,
                ),
                shutdown_timeout=settings.grace_period_seconds,
            )
        if on_ready is not None:
            on_ready(ServingPorts(port, gateway.port if gateway else None))
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %gs", settings.grace_period_seconds)
        await health.enter_graceful_shutdown()
        if gateway is not None:
            # REST first: its in-flight requests still need the gRPC server.
            await gateway.aclose()
            gateway = None
        await server.stop(settings.grace_period_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if gateway is not None:
            await gateway.aclose()
        await components.aclose()
