"""The REST shim calling the gRPC server's handlers in process (``balances serve`` with REST on).

Two proofs: ``balances serve`` dispatches unary REST calls without its channel
ever connecting while every interceptor still applies (key, quota, deadline,
request ID); and the in-process path answers byte for byte what the channel
path answers, headers included, for successes and errors alike.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from grpc import aio

from service import run as run_module
from service.api.services import API_SERVICES
from service.devchain.world import DemoWorld
from service.gateway.app import build_gateway_app
from service.gateway.inprocess import InProcessServer
from service.gateway.limits import RestLimits
from service.gateway.routes import routes_of
from service.grpc_server import create_server
from service.run import ServingPorts, serve
from service.settings.model import LimitsSettings, RestSettings
from tests.support.rest import serve_gateway
from tests.support.stack import Stack, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WALLET = "wal_alice_polygon"
BURST = 4
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


class RecordingInProcess(InProcessServer):
    made: list[InProcessServer] = []

    def __init__(self) -> None:
        super().__init__()
        RecordingInProcess.made.append(self)


async def test_serve_dispatches_rest_in_process_through_every_interceptor(
    world: DemoWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = await write_stack_config(
        world,
        tmp_path,
        {name: [network.rpc_url] for name, network in world.networks.items()},
        rest=RestSettings(listen="127.0.0.1:0"),
        limits=LimitsSettings(requests_per_second=0.1, burst=BURST),
    )
    RecordingInProcess.made = []
    monkeypatch.setattr(run_module, "InProcessServer", RecordingInProcess)
    channels: list[aio.Channel] = []
    make_channel = aio.insecure_channel

    def recording_channel(target: str, *args: Any, **kwargs: Any) -> aio.Channel:
        channel = make_channel(target, *args, **kwargs)
        channels.append(channel)
        return channel

    monkeypatch.setattr(aio, "insecure_channel", recording_channel)
    stop = asyncio.Event()
    ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(config.settings, on_ready=ready.set_result, stop=stop))
    try:
        async with asyncio.timeout(30):
            await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        base = f"http://127.0.0.1:{ready.result().rest}/v1/wallets/{WALLET}/balance"
        key = {"X-API-Key": config.api_key}
        async with aiohttp.ClientSession() as http:
            # A request ID given is the one the server used (its trailer) and echoed.
            given = "req-in-process-1"
            async with http.get(base, headers={**key, "X-Request-Id": given}) as reply:
                assert reply.status == 200, await reply.text()
                assert reply.headers["X-Request-Id"] == given
                # No "TE: trailers": the server's trailers are withheld, as grpc-gateway does.
                assert "Grpc-Metadata-X-Request-Id" not in reply.headers
                assert (await reply.json())["walletId"] == WALLET
            # Authentication: the auth interceptor answered, mapped as on the wire.
            async with http.get(base, headers={"X-API-Key": "bk_wrong"}) as reply:
                assert reply.status == 401
                assert (await reply.json())["code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]
                assert reply.headers["WWW-Authenticate"].startswith("ApiKey")
                assert reply.headers["X-Request-Id"]
            # The Grpc-Timeout header is the call's deadline: a read of a wallet not yet
            # cached cannot finish in a microsecond.
            cold = base.replace(WALLET, "wal_bob_polygon")
            async with http.get(cold, headers={**key, "Grpc-Timeout": "1u"}) as reply:
                assert reply.status == 504
                body = await reply.json()
                assert body["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
            # Quotas: the key's burst runs out, then 429 with the RetryInfo and Retry-After.
            for _ in range(BURST + 1):
                async with http.get(base, headers={**key, "Grpc-Timeout": "500m"}) as reply:
                    if reply.status == 429:
                        body = await reply.json()
                        break
                    assert reply.status == 200
            assert reply.status == 429
            reason, detail = body["details"]
            assert reason["reason"] == "RATE_LIMITED"
            assert detail["@type"] == RETRY_INFO
            delay = float(detail["retryDelay"].removesuffix("s"))
            assert reply.headers["Retry-After"] == str(math.ceil(delay))
        (in_process,) = RecordingInProcess.made
        assert in_process.calls >= 4  # every REST call above went in process...
        (shim_channel,) = channels  # ...and the shim's channel (kept for watches) never connected
        assert shim_channel.get_state() == grpc.ChannelConnectivity.IDLE
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


# The same requests through both paths: identical status, headers and body bytes.
REQUESTS: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", f"/v1/wallets/{WALLET}/balance", {}, None),
    ("GET", "/v1/customers/cus_alice/balances", {}, None),
    ("GET", "/v1/wallets/wal_nobody_polygon/balance", {}, None),
    ("GET", "/v1/wallets/not a wallet/balance", {}, None),
    ("GET", f"/v1/wallets/{WALLET}/balance", {"X-API-Key": "bk_wrong"}, None),
    ("GET", f"/v1/wallets/{WALLET}/balance", {"X-API-Key": ""}, None),
    ("GET", f"/v1/wallets/{WALLET}/balance", {"Grpc-Metadata-Trace": "t1"}, None),
    ("GET", "/v1/customers/cus_alice/wallets?pageSize=1", {}, None),
    ("GET", "/v1/customers/cus_alice/wallets?page_size=-1", {}, None),
    ("GET", "/v1/customers/cus_alice/wallets?pageToken=garbage", {}, None),
    ("GET", "/v1/customers/cus_alice/wallets/wal_alice_polygon", {}, None),
    ("GET", "/v1/customers/cus_alice/wallets/wal_nobody", {}, None),
    ("POST", "/v1/customers/cus_alice/wallets/import", {}, b'{"network": "nowhere"}'),
    ("POST", "/v1/customers/cus_alice/wallets/import", {}, b"{not json"),
    ("GET", "/v1/webhooks", {}, None),
    ("PATCH", "/v1/webhooks", {}, b'{"url": "ftp://nope"}'),
]


@pytest_asyncio.fixture(loop_scope="session")
async def both_gateways(stack: Stack) -> AsyncIterator[tuple[str, str, InProcessServer]]:
    routes = routes_of(API_SERVICES)
    limits = RestLimits()
    in_process = InProcessServer()
    server, _, _ = create_server(stack.service, "127.0.0.1:0", in_process=in_process)
    wire, wire_base = await serve_gateway(
        build_gateway_app(stack.channel, routes, limits, title="B")
    )
    local, local_base = await serve_gateway(
        build_gateway_app(stack.channel, routes, limits, title="B", in_process=in_process)
    )
    try:
        yield wire_base, local_base, in_process
    finally:
        await wire.cleanup()
        await local.cleanup()
        await server.stop(None)


async def test_in_process_answers_byte_for_byte_as_the_channel(
    stack: Stack, both_gateways: tuple[str, str, InProcessServer]
) -> None:
    wire_base, local_base, in_process = both_gateways
    async with aiohttp.ClientSession() as http:

        async def fetch(base: str, i: int, request: Any) -> tuple[int, dict[str, str], bytes]:
            method, path, headers, body = request
            sent = {"X-API-Key": stack.api_key, "X-Request-Id": f"req-{i}", **headers}
            async with http.request(method, base + path, headers=sent, data=body) as reply:
                kept = {k: v for k, v in reply.headers.items() if k != "Date"}
                return reply.status, kept, await reply.read()

        for i, request in enumerate(REQUESTS):
            before = in_process.calls
            wire = await fetch(wire_base, i, request)
            local = await fetch(local_base, i, request)
            assert local == wire, request
            assert in_process.calls <= before + 1
        assert in_process.calls >= len(REQUESTS) - 2  # the gateway itself refused a few
