"""``balances gateway``: the REST shim alone, proxying to a gRPC server elsewhere, until a signal.

Loads only the shim and the services' descriptors: no chain, store or watch code
(a lint contract keeps it so).
"""

from __future__ import annotations

import asyncio
import signal

from service.api.services import API_SERVICES
from service.gateway.limits import RestLimits
from service.gateway.serve import start_gateway

__all__ = ["run_sidecar"]


async def run_sidecar(grpc_target: str, listen: str, limits: RestLimits) -> None:
    """Serve REST on ``listen`` for ``grpc_target`` until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        gateway = await start_gateway(grpc_target, listen, API_SERVICES, limits)
        try:
            await stop.wait()
        finally:
            await gateway.aclose()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
