"""Running the REST shim: on its own (a sidecar) or beside the gRPC server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc import aio

from service.errors import CannotListen
from service.gateway.app import build_gateway_app
from service.gateway.connections import ConnectionCaps, ConnectionGuard, fd_limit
from service.gateway.inprocess import InProcessServer
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of

__all__ = ["RunningGateway", "start_gateway"]

log = logging.getLogger(__name__)

# How many sockets asyncio accepts per wake-up.  They reach the guard two loop turns later
# and its victims close one turn after that, so under a flood about three batches of
# descriptors are in flight beyond the caps, out of the reserve ConnectionCaps keeps:
# small (aiohttp's 128 put 900 sockets in a process limited to 1024).
_ACCEPT_BATCH = 32
# The kernel's queue of connections not yet accepted, which costs no file descriptor: deep,
# so a burst of reconnecting clients queues (a short wait) instead of overflowing it (a
# dropped SYN costs a newcomer a 1 s retransmit).  The kernel caps it at net.core.somaxconn.
_LISTEN_QUEUE = 1024


@dataclass
class RunningGateway:
    runner: web.AppRunner
    server: asyncio.Server
    guard: ConnectionGuard
    channel: aio.Channel
    port: int

    closed: bool = False

    async def aclose(self) -> None:
        """Stop accepting, let in-flight requests finish, then close the channel (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.server.close()
        await self.runner.cleanup()
        self.guard.close()
        await self.channel.close(None)


async def start_gateway(
    grpc_target: str,
    listen: str,
    services: Iterable[ServiceDescriptor],
    limits: RestLimits,
    *,
    shutdown_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    reuse_port: bool = False,
    in_process: InProcessServer | None = None,
) -> RunningGateway:
    """Serve REST on ``listen`` (HTTPS with ``ssl_context``), proxying to ``grpc_target``.

    ``grpc_target`` is any grpc target: ``HOST:PORT``, or ``unix:/path`` for the
    private socket of an in-process server.  ``reuse_port`` (SO_REUSEPORT) shares
    ``listen`` with other processes on purpose (``serve --workers``); without it a
    taken port is an error, never shared.  With ``in_process`` (that server's handlers,
    recorded by ``InProcessServer.record``) unary calls skip the channel; streams use it.
    """
    caps = ConnectionCaps.derive(
        fd_limit(),
        max_connections=limits.max_connections,
        max_per_client=limits.max_connections_per_client,
    )
    guard = ConnectionGuard(
        caps,
        header_timeout=limits.header_timeout_seconds,
        keepalive_timeout=limits.keepalive_timeout_seconds,
    )
    channel = aio.insecure_channel(grpc_target)
    app = build_gateway_app(
        channel, routes_of(services), limits, title="Balances API", in_process=in_process
    )
    app.middlewares.insert(0, guard.middleware)  # outermost: it sees each request head first
    # handler_cancellation: a client that goes away cancels its gRPC call (a watch, say).
    # aiohttp's own keep-alive timer only backs up the guard's.
    runner = web.AppRunner(
        app,
        shutdown_timeout=shutdown_timeout,
        access_log=None,
        handler_cancellation=True,
        keepalive_timeout=limits.keepalive_timeout_seconds + limits.header_timeout_seconds,
    )
    server: asyncio.Server | None = None
    try:
        await runner.setup()
        assert runner.server is not None
        host, _, port = listen.rpartition(":")
        # Not a web.TCPSite: the listener gets the guard's protocol factory, wrapping aiohttp's.
        try:
            server = await asyncio.get_running_loop().create_server(
                guard.protocol_factory(runner.server),
                host.strip("[]"),
                int(port),
                ssl=ssl_context,
                backlog=_ACCEPT_BATCH,
                reuse_port=reuse_port,
                ssl_handshake_timeout=(
                    limits.header_timeout_seconds if ssl_context is not None else None
                ),
            )
        except OSError as exc:
            raise CannotListen(listen, exc.strerror or "the address is in use") from exc
        _deepen_listen_queue(server, _LISTEN_QUEUE)
    except BaseException:
        if server is not None:
            server.close()
        await runner.cleanup()
        guard.close()
        await channel.close(None)
        raise
    bound = server.sockets[0].getsockname()[1]
    log.info(
        "serving REST%s on port %d (proxying to gRPC at %s)",
        " over TLS" if ssl_context is not None else "",
        bound,
        grpc_target,
    )
    log.info(
        "REST connections: fd limit %d; at most %d open, %d per client address%s;"
        " header timeout %gs, keep-alive %gs",
        caps.fd_limit,
        caps.max_connections,
        caps.max_per_client,
        _capped_note(limits, caps),
        limits.header_timeout_seconds,
        limits.keepalive_timeout_seconds,
    )
    return RunningGateway(runner, server, guard, channel, bound)


def _capped_note(limits: RestLimits, caps: ConnectionCaps) -> str:
    """Says when a configured cap was lowered to what the fd limit allows."""
    lowered = [
        f"{name} {configured} lowered to {cap}"
        for name, configured, cap in (
            ("max_connections", limits.max_connections, caps.max_connections),
            ("max_connections_per_client", limits.max_connections_per_client, caps.max_per_client),
        )
        if configured and configured != cap
    ]
    return f" ({', '.join(lowered)} by the fd limit)" if lowered else ""


def _deepen_listen_queue(server: asyncio.Server, depth: int) -> None:
    """Give the kernel queue ``depth`` while asyncio keeps accepting ``_ACCEPT_BATCH`` at a time.

    asyncio uses one number for both (it calls ``listen`` once, at start); ``listen`` again
    on the same socket, through a duplicate descriptor, changes only the queue.
    """
    for listening in server.sockets:
        with socket.socket(fileno=os.dup(listening.fileno())) as duplicate:
            duplicate.listen(depth)
