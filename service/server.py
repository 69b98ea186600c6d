"""Wiring: the composition root, the gRPC server, and its lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from balances.v1 import balances_pb2, balances_pb2_grpc, wallets_pb2, wallets_pb2_grpc
from service.api.auth_interceptor import AuthInterceptor
from service.api.balances_servicer import BalancesServicer
from service.api.interceptors import ErrorInterceptor
from service.api.wallets_servicer import WalletsServicer
from service.auth.authenticator import Authenticator
from service.balances import BalanceQueries
from service.cache import MemorySnapshotCache
from service.chain.reader import ChainReader
from service.chain.rpc import RpcClient
from service.config import Settings, TlsSettings
from service.directory.base import ApiKeyStore, WalletDirectory
from service.directory.sqlite import SqliteWalletDirectory
from service.gateway.app import GatewayLimits
from service.gateway.serve import RunningGateway, start_gateway
from service.registry import WalletRegistry
from service.tls import PrivateSocket, grpc_server_credentials, rest_ssl_context
from service.watch.cache_refresh import CacheRefresh
from service.watch.events import ChangeListener, FollowerStateStore, WatchedSource
from service.watch.follower import BlockFollower
from service.watch.hub import WatchHub
from service.watch.new_heads import NewHeadsSubscription
from service.watch.watches import BalanceWatches
from service.webhooks.wiring import SERVICE_DESCRIPTOR as WEBHOOKS_SERVICE
from service.webhooks.wiring import WebhookComponents, build_webhooks

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
API_SERVICES = (
    balances_pb2.DESCRIPTOR.services_by_name["BalancesService"],
    wallets_pb2.DESCRIPTOR.services_by_name["WalletsService"],
    WEBHOOKS_SERVICE,
)


@dataclass(frozen=True)
class ServingPorts:
    grpc: int
    rest: int | None


@dataclass
class Components:
    """Everything the servicers need, built once from settings; closed with ``aclose``."""

    settings: Settings
    directory: WalletDirectory
    keys: ApiKeyStore
    rpc_clients: list[RpcClient]
    readers: dict[str, ChainReader]
    cache: MemorySnapshotCache
    queries: BalanceQueries
    registry: WalletRegistry
    hub: WatchHub  # watch subscriptions; a ChangeListener and WatchedSource of every follower
    watches: BalanceWatches  # the watch use cases behind the streaming RPCs
    followers: dict[str, BlockFollower]  # one per network; started by ``start_watching``
    webhooks: WebhookComponents  # config RPCs, the outbox emitter and the delivery worker
    # newHeads over ws_url, where configured: wakes the network's follower on each block.
    new_heads: list[NewHeadsSubscription] = field(default_factory=list)

    def add_watch(
        self, *, listener: ChangeListener | None = None, source: WatchedSource | None = None
    ) -> None:
        """Plug another consumer (the webhook emitter) into every network's follower.

        Listeners are called after the cache refresh and the hub, in the order added.
        """
        for follower in self.followers.values():
            if listener is not None:
                follower.add_listener(listener)
            if source is not None:
                follower.add_source(source)

    def start_watching(self) -> None:
        """Start every block follower and newHeads subscription (idempotent)."""
        for follower in self.followers.values():
            follower.start()
        for subscription in self.new_heads:
            subscription.start()

    async def start(self) -> None:
        """Start the background work: block followers and webhook delivery."""
        self.start_watching()
        await self.webhooks.delivery.start()

    def stop_watches(self) -> None:
        """End every open watch stream normally (shutdown starts); new ones end at once."""
        self.hub.close()

    async def aclose(self) -> None:
        self.hub.close()
        for subscription in self.new_heads:
            await subscription.aclose()
        for follower in self.followers.values():
            await follower.aclose()
        await self.webhooks.delivery.aclose()
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
    hub = WatchHub(queries.wallet_balance_at, directory.get_wallet)

    async def forget_wallet(network: str, address: str) -> None:
        await queries.forget_address(network, address)
        await hub.address_released(network, address)  # ends watches of a deleted wallet

    registry = WalletRegistry(directory, [n.name for n in settings.networks], forget_wallet)
    followers = {
        n.name: _follower(settings, readers[n.name], queries, hub, directory)
        for n in settings.networks
    }
    components = Components(
        settings,
        directory,
        directory,
        rpc_clients,
        readers,
        cache,
        queries,
        registry,
        hub,
        BalanceWatches(directory, queries, hub),
        followers,
        build_webhooks(settings, directory),
        [
            NewHeadsSubscription(n.name, n.ws_url, followers[n.name].wake)
            for n in settings.networks
            if n.ws_url is not None
        ],
    )
    emitter = components.webhooks.emitter
    components.add_watch(listener=emitter, source=emitter)
    return components


def _follower(
    settings: Settings,
    reader: ChainReader,
    queries: BalanceQueries,
    hub: WatchHub,
    state_store: FollowerStateStore,
) -> BlockFollower:
    """A network's follower: the cache refresh first, then the hub (more via ``add_watch``)."""
    follower = BlockFollower(
        reader.network,
        reader,
        poll_interval=settings.watch.poll_interval_seconds,
        read_timeout=settings.rpc_timeout_seconds,
        state_store=state_store,
    )
    refresh = CacheRefresh(queries)
    follower.add_baseline_listener(refresh)
    follower.add_baseline_listener(hub)
    follower.add_listener(refresh)
    follower.add_listener(hub)
    follower.add_source(hub)
    return follower


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
    components: Components,
    listen: str,
    *,
    tls: TlsSettings | None = None,
    private_socket: PrivateSocket | None = None,
) -> tuple[aio.Server, int, health_aio.HealthServicer]:
    """A configured, not yet started server, the port it bound, and its health servicer.

    ``listen`` is served over TLS when ``tls`` is given (mutual TLS when it names a
    client CA).  ``private_socket`` adds a plaintext Unix-socket listener for the
    in-process REST gateway; the same interceptors (auth included) run on both.
    """
    # ErrorInterceptor is outermost, so authentication failures are mapped like any error.
    server = aio.server(
        interceptors=[ErrorInterceptor(), AuthInterceptor(Authenticator(components.keys))]
    )
    balances_pb2_grpc.add_BalancesServiceServicer_to_server(
        BalancesServicer(
            components.queries, components.settings.base_currency_digits, components.watches
        ),
        server,
    )
    wallets_pb2_grpc.add_WalletsServiceServicer_to_server(
        WalletsServicer(components.registry), server
    )
    components.webhooks.add_to_server(server)
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
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, grpc_server_credentials(tls))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    if private_socket is not None and server.add_insecure_port(private_socket.target) == 0:
        raise OSError(f"cannot listen on {private_socket.target}")
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
    private_socket: PrivateSocket | None = None
    try:
        if settings.rest is not None:
            # The REST gateway's own way in, independent of the public port's TLS/mTLS.
            private_socket = PrivateSocket()
        server, port, health = create_server(
            components, settings.listen, tls=settings.tls, private_socket=private_socket
        )
        await server.start()
        await components.start()
        for service in ("", *(s.full_name for s in API_SERVICES)):
            await health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("serving gRPC on port %d%s", port, _tls_note(settings.tls))
        if settings.rest is not None:
            assert private_socket is not None
            gateway = await start_gateway(
                private_socket.target,
                settings.rest.listen,
                API_SERVICES,
                GatewayLimits(
                    max_body_bytes=settings.rest.max_body_bytes,
                    body_read_timeout_seconds=settings.rest.body_read_timeout_seconds,
                    default_timeout_seconds=settings.rest.default_timeout_seconds,
                ),
                shutdown_timeout=settings.grace_period_seconds,
                ssl_context=(
                    rest_ssl_context(settings.rest.tls) if settings.rest.tls is not None else None
                ),
            )
        if on_ready is not None:
            on_ready(ServingPorts(port, gateway.port if gateway else None))
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %gs", settings.grace_period_seconds)
        await health.enter_graceful_shutdown()
        # Watch streams would hold the grace period: end them (normally) first.
        components.stop_watches()
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
        if private_socket is not None:
            private_socket.close()
        await components.aclose()


def _tls_note(tls: TlsSettings | None) -> str:
    if tls is None:
        return ""
    return " (TLS, client certificates required)" if tls.client_ca_file else " (TLS)"
