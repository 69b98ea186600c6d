"""The bare reference servers: what serving the same bytes costs with nothing else to do.

    python -m scripts.bench.references grpc RESPONSE_FILE   # bare grpc.aio
    python -m scripts.bench.references rest RESPONSE_FILE   # bare aiohttp
    python -m scripts.bench.references watch MESSAGE_FILE   # bare grpc.aio streams

``grpc`` answers ``balances.v1.BalancesService/GetWalletBalance`` with the
bytes in the file (the service's own serialized response) without parsing the
request; ``rest`` answers ``GET /v1/wallets/{wallet_id}/balance`` with the
file's JSON; ``watch`` answers ``WatchWalletBalance`` with the file's bytes (a
message the service sent), once when a stream opens and once more on every
stream each time ``bench.Push/Push`` is called: the fan-out of one prebuilt
message to every open stream, with nothing else to do.  Each prints ``port N``
once it listens, then serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc import aio


async def _bare_grpc(response: bytes, stop: asyncio.Event) -> None:
    async def get_wallet_balance(request: bytes, context: Any) -> bytes:
        return response

    handler = grpc.unary_unary_rpc_method_handler(get_wallet_balance)  # bytes in, bytes out
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "balances.v1.BalancesService", {"GetWalletBalance": handler}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await stop.wait()
    await server.stop(1)


async def _bare_watch(message: bytes, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    pushed: list[asyncio.Future[None]] = [loop.create_future()]

    async def watch(request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield message
        while True:
            await pushed[0]
            yield message

    async def push(request: bytes, context: Any) -> bytes:
        done, pushed[0] = pushed[0], loop.create_future()
        done.set_result(None)
        return b""

    server = aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "balances.v1.BalancesService",
                {"WatchWalletBalance": grpc.unary_stream_rpc_method_handler(watch)},
            ),
            grpc.method_handlers_generic_handler(
                "bench.Push", {"Push": grpc.unary_unary_rpc_method_handler(push)}
            ),
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await stop.wait()
    await server.stop(1)


async def _bare_rest(body: bytes, stop: asyncio.Event) -> None:
    async def balance(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/wallets/{wallet_id}/balance", balance)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"port {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()


async def _main(kind: str, payload: bytes) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serve = {"grpc": _bare_grpc, "rest": _bare_rest, "watch": _bare_watch}[kind]
    await serve(payload, stop)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("grpc", "rest", "watch"):
        sys.exit(__doc__)
    asyncio.run(_main(sys.argv[1], Path(sys.argv[2]).read_bytes()))
