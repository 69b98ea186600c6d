"""Builds the gRPC server of a service: servicers, interceptors, health and reflection."""

from __future__ import annotations

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from balances.v1 import balances_pb2_grpc, wallets_pb2_grpc, webhooks_pb2_grpc
from service import metrics, tracing
from service.api.balances_servicer import BalancesServicer
from service.api.interceptors import ApiInterceptor
from service.api.metrics_interceptor import MetricsInterceptor
from service.api.network_health import NetworkHealthReporter
from service.api.services import API_SERVICES
from service.api.tracing_interceptor import TracingInterceptor
from service.api.wallets_servicer import WalletsServicer
from service.api.webhooks_servicer import WebhooksServicer
from service.errors import CannotListen
from service.gateway.inprocess import InProcessServer
from service.settings import TlsSettings
from service.tls import PrivateSocket, grpc_server_credentials
from service.wiring import Service

__all__ = ["create_server"]


def create_server(
    service: Service,
    listen: str,
    *,
    tls: TlsSettings | None = None,
    private_socket: PrivateSocket | None = None,
    reuse_port: bool = False,
    in_process: InProcessServer | None = None,
) -> tuple[aio.Server, int, health_aio.HealthServicer]:
    """A configured, not yet started server, the port it bound, and its health servicer.

    ``listen`` is served over TLS when ``tls`` is given (mutual TLS when it names a
    client CA).  ``private_socket`` adds a plaintext Unix-socket listener for the
    in-process REST gateway; the same interceptors (auth included) run on both.
    ``reuse_port`` shares ``listen`` with other processes on purpose (``serve --workers``).
    ``in_process`` records the interceptors and handlers, for the REST gateway in this
    process to call directly.
    """
    # One interceptor for request IDs, errors, authentication and quotas (each is one more
    # coroutine per call).  grpcio turns SO_REUSEPORT on by default: a second server on a
    # taken port would silently share it instead of failing.  Only ``serve --workers`` asks.
    interceptors: list[aio.ServerInterceptor] = [  # type: ignore[type-arg]
        ApiInterceptor(service.authenticator, service.quotas)
    ]
    if metrics.enabled():  # [metrics]: outside the others, so refusals are counted and timed
        interceptors.insert(0, MetricsInterceptor())
    if tracing.enabled():  # [tracing]: outermost, a call's span covers auth and errors too
        interceptors.insert(0, TracingInterceptor())
    server = aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.so_reuseport", int(reuse_port)),
            # Hostile or vanished clients: a connection must finish its handshake in 10 s
            # (default 120 s), one with no call is closed after 2 min idle (clients reconnect
            # transparently), and a silent peer under a long call (a watch) is found within
            # 80 s by pings. Client pings stay limited by grpc's defaults (5 min, 2 strikes).
            ("grpc.server_handshake_timeout_ms", 10_000),
            ("grpc.max_connection_idle_ms", 120_000),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )
    # Every handler is registered through ``handlers``: the server, or it plus a record.
    handlers = server if in_process is None else in_process.record(server, interceptors)
    balances_pb2_grpc.add_BalancesServiceServicer_to_server(
        BalancesServicer(service.queries, service.settings.minor_unit_digits, service.watches),
        handlers,
    )
    wallets_pb2_grpc.add_WalletsServiceServicer_to_server(
        WalletsServicer(service.registry), handlers
    )
    webhooks_pb2_grpc.add_WebhooksServiceServicer_to_server(
        WebhooksServicer(service.webhook_management), handlers
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, handlers)
    service.network_health.add_listener(NetworkHealthReporter(health))  # balances.v1.network.*
    reflection.enable_server_reflection(
        (
            *(descriptor.full_name for descriptor in API_SERVICES),
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        handlers,
    )
    credentials = None if tls is None else grpc_server_credentials(tls)
    port = _bind(server, listen, credentials)
    if private_socket is not None:
        _bind(server, private_socket.target, None)
    return server, port, health


def _bind(server: aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Bind ``address``; ``CannotListen`` (one line, no trace) when it is taken."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio >= 1.60 raises where it used to return 0
        raise CannotListen(address) from exc
    if port == 0:
        raise CannotListen(address)
    return port
