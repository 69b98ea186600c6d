"""Running the REST shim: on its own (a sidecar) or beside the gRPC server."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from service.errors import CannotListen
from service.gateway.app import build_gateway_app
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of

__all__ = ["RunningGateway", "start_gateway"]

log = logging.getLogger(__name__)


@dataclass
class RunningGateway:
    runner: web.AppRunner
    channel: aio.Channel
    port: int

    closed: bool = False

    async def aclose(self) -> None:
        """Stop accepting, let in-flight requests finish, then close the channel (idempotent)."""
        if self.closed:
            return
        self.closed = True
        await self.runner.cleanup()
        await self.channel.close(None)


async def start_gateway(
    grpc_target: str,
    listen: str,
    services: Iterable[ServiceDescriptor],
    limits: RestLimits,
    *,
    shutdown_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
) -> RunningGateway:
    """Serve REST on ``listen`` (HTTPS with ``ssl_context``), proxying to ``grpc_target``.

    ``grpc_target`` is any grpc target: ``HOST:PORT``, or ``unix:/path`` for the
    private socket of an in-process server.
    """
    channel = aio.insecure_channel(grpc_target)
    app = build_gateway_app(channel, routes_of(services), limits, title="Balances API")
    # handler_cancellation: a client that goes away cancels its gRPC call (a watch, say).
    runner = web.AppRunner(
        app, shutdown_timeout=shutdown_timeout, access_log=None, handler_cancellation=True
    )
    try:
        await runner.setup()
        host, _, port = listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(listen, exc.strerror or "the address is in use") from exc
    except BaseException:
        await runner.cleanup()
        await channel.close(None)
        raise
    bound = runner.addresses[0][1]
    log.info(
        "serving REST%s on port %d (proxying to gRPC at %s)",
        " over TLS" if ssl_context is not None else "",
        bound,
        grpc_target,
    )
    return RunningGateway(runner, channel, bound)
