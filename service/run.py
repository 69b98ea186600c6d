"""Runs one server process: open the service, bind gRPC and REST, serve until a signal, drain.

Every start registers its stop on one ``AsyncExitStack``, so a start that fails
half-way (a REST port already in use, say) undoes exactly what was started:
nothing keeps serving on top of a closed store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health_pb2

from service import metrics
from service.api.services import API_SERVICES
from service.gateway.inprocess import InProcessServer
from service.gateway.serve import start_gateway
from service.grpc_server import create_server
from service.metrics_sampler import MetricsSampler, sampling
from service.settings import Settings, TlsSettings
from service.tls import PrivateSocket, rest_ssl_context
from service.tracing import start_tracing, stop_tracing
from service.wiring import Service, open_service

__all__ = ["ServingPorts", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingPorts:
    grpc: int
    rest: int | None


async def serve(
    settings: Settings,
    *,
    on_ready: Callable[[ServingPorts], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve until ``stop`` is set: then NOT_SERVING, drain, close.

    ``reuse_port``: share the gRPC and REST ports with sibling workers on purpose
    (``balances serve --workers``, service/workers.py); otherwise a taken port fails.

    The signals are the caller's: ``balances serve`` sets ``stop`` on SIGTERM/SIGINT
    once ``on_ready`` has run, and cancels this task on one before
    (service/stop_signals.py); the exit stack then stops what was started.
    """
    stop = stop or asyncio.Event()
    async with AsyncExitStack() as exits:
        if settings.tracing.enabled:  # before the server and the shim: they trace when it is on
            assert settings.tracing.otlp_endpoint is not None
            provider = start_tracing(
                service_name=settings.tracing.service_name,
                otlp_endpoint=settings.tracing.otlp_endpoint,
                sample_ratio=settings.tracing.sample_ratio,
            )
            exits.push_async_callback(stop_tracing, provider)  # last: sends the final spans
        if settings.metrics_listen is not None:
            metrics.enable()  # before the server and the shim: they measure when it is on
        service = await exits.enter_async_context(open_service(settings))
        # The REST gateway's own way in, independent of the public port's TLS/mTLS.
        private_socket = PrivateSocket() if settings.rest is not None else None
        # ...and its direct one: unary REST calls run the server's handlers, no channel.
        in_process = InProcessServer() if settings.rest is not None else None
        if private_socket is not None:
            exits.callback(private_socket.close)
        server, port, health = create_server(
            service,
            settings.listen,
            tls=settings.tls,
            private_socket=private_socket,
            reuse_port=reuse_port,
            in_process=in_process,
        )
        await server.start()
        exits.push_async_callback(_stop_at_once, server)  # a later failed start stops it
        gateway = None
        if settings.rest is not None:
            assert private_socket is not None
            gateway = await start_gateway(
                private_socket.target,
                settings.rest.listen,
                API_SERVICES,
                settings.rest.limits,
                shutdown_timeout=settings.grace_period_seconds,
                reuse_port=reuse_port,
                in_process=in_process,
                ssl_context=(
                    rest_ssl_context(settings.rest.tls) if settings.rest.tls is not None else None
                ),
            )
            exits.push_async_callback(gateway.aclose)
        service.listening_on(port, gateway.port if gateway else None)  # before any webhook
        await service.start()
        for name in ("", *(s.full_name for s in API_SERVICES)):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        await service.network_health.publish()  # each network, and "" unless none is readable
        if settings.metrics_listen is not None:
            await _serve_metrics(exits, service, settings.metrics_listen)
        log.info("serving gRPC on port %d%s", port, _tls_note(settings.tls))
        # What start-up built lives as long as the process: keep it out of every later
        # full collection (measured: 90-200 ms pauses in a 1,000-stream watch fan-out).
        gc.freeze()
        # A request allocates thousands of short-lived objects (protos, snapshots, dicts);
        # the default 700-allocation young threshold ran ~1,100 collections per bench run.
        # Measured on the cold and watch paths: 10-35% less time, at a few MB more RSS.
        gc.set_threshold(20_000, 20, 20)
        if on_ready is not None:
            on_ready(ServingPorts(port, gateway.port if gateway else None))
        await stop.wait()
        log.info("stopping: NOT_SERVING, draining for up to %gs", settings.grace_period_seconds)
        await health.enter_graceful_shutdown()
        # Watch streams would hold the grace period: end them (normally) first.
        service.stop_watches()
        if gateway is not None:
            # REST first: its in-flight requests still need the gRPC server.
            await gateway.aclose()
        await server.stop(settings.grace_period_seconds)


async def _stop_at_once(server: Any) -> None:
    """Stop a server that start-up is abandoning.  One turn of the loop first: grpc's
    server main loop, started by ``start()``, raises InvalidStateError (in a task nobody
    awaits) when shutdown comes before it first ran (seen with SIGTERM mid start-up)."""
    await asyncio.sleep(0)
    await server.stop(None)


async def _serve_metrics(exits: AsyncExitStack, service: Service, listen: str) -> None:
    """``GET /metrics`` on ``listen``; a ``serve --workers`` worker only samples into the
    supervisor's directory, which the supervisor serves (service/workers.py)."""
    if metrics.in_worker():
        await exits.enter_async_context(sampling(service))
        return
    sampler = MetricsSampler(service)
    await exits.enter_async_context(metrics.serve_metrics(listen, before_scrape=sampler.sample))


def _tls_note(tls: TlsSettings | None) -> str:
    if tls is None:
        return ""
    return " (TLS, client certificates required)" if tls.client_ca_file else " (TLS)"
