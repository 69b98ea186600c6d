"""Servers sharing one Redis (``[cache] redis_url``): one cache, one read per key, one bucket.

Two in-process servers (``running_stack``), each with its own wallet directory
holding the same demo wallets and its own counting proxies, stand for two
replicas; a ``balances serve`` process shows the setting reaching a real server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2
from balances.v1.balances_pb2_grpc import BalancesServiceStub
from service.auth.keys import hash_key, key_id_of
from service.devchain.world import DemoWorld
from service.domain import DEFAULT_TENANT
from service.quotas_redis import RedisCallQuotas
from service.settings.model import LimitsSettings
from tests.support.serving import serve_process
from tests.support.stack import Stack, keyed_channel, running_stack
from tests.support.tenancy_kit import Stubs

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@asynccontextmanager
async def two_replicas(
    world: DemoWorld, tmp_path: Path, redis_url: str, **changes: object
) -> AsyncIterator[tuple[Stack, Stack]]:
    async with AsyncExitStack() as exits:
        one, other = [
            await exits.enter_async_context(
                running_stack(world, tmp_path / name, cache_redis_url=redis_url, **changes)
            )
            for name in ("one", "other")
        ]
        yield one, other


async def snapshot_keys(redis_url: str) -> list[bytes]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return sorted(await client.keys("balances:snap:*"))
    finally:
        await client.aclose()


def calls(*stacks: Stack) -> int:
    return sum(sum(stack.eth_calls().values()) for stack in stacks)


async def test_replicas_share_one_cache_and_one_read_per_key(
    world: DemoWorld, tmp_path: Path, redis_url: str
) -> None:
    async with two_replicas(world, tmp_path, redis_url) as (one, other):
        assert isinstance(one.service.quotas, RedisCallQuotas)
        request = pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
        first = await one.stub.GetWalletBalance(request, timeout=10)
        assert calls(one, other) == 1 and len(await snapshot_keys(redis_url)) == 1
        assert await other.stub.GetWalletBalance(request, timeout=10) == first
        assert calls(one, other) == 1  # the other replica read the shared value

        # A burst of cold requests spread over both replicas: one upstream read in all.
        burst = pb.GetCustomerBalancesRequest(customer_id="cus_alice")
        answers = await asyncio.gather(
            *((one, other)[i % 2].stub.GetCustomerBalances(burst, timeout=20) for i in range(300))
        )
        networks = {w.network for w in answers[0].wallets}
        assert calls(one, other) == 1 + len(networks)  # one eth_call per network
        assert all(answer == answers[0] for answer in answers)


async def test_a_wallet_deleted_on_one_replica_leaves_the_shared_cache(
    world: DemoWorld, tmp_path: Path, redis_url: str
) -> None:
    async with two_replicas(world, tmp_path, redis_url) as (one, other):
        request = pb.GetWalletBalanceRequest(wallet_id="wal_bob_polygon")
        await other.stub.GetWalletBalance(request, timeout=10)
        assert len(await snapshot_keys(redis_url)) == 1
        await Stubs(one.keyed).wallets.DeleteWallet(
            wallets_pb2.DeleteWalletRequest(customer_id="cus_bob", wallet_id="wal_bob_polygon"),
            timeout=10,
        )
        assert await snapshot_keys(redis_url) == []  # gone for every replica
        await other.stub.GetWalletBalance(request, timeout=10)  # still in the other directory
        assert calls(one, other) == 2  # read again, not served from a stale copy


async def test_rate_limits_are_shared_by_replicas(
    world: DemoWorld, tmp_path: Path, redis_url: str
) -> None:
    limits = LimitsSettings(requests_per_second=0.01, burst=3)
    async with two_replicas(world, tmp_path, redis_url, limits=limits) as (one, other):
        # The same API key on both replicas (each has a directory of its own here).
        key = one.api_key
        await other.service.stores.api_keys.add_key(
            key_id_of(key) or "", DEFAULT_TENANT, hash_key(key)
        )
        request = pb.GetWalletBalanceRequest(wallet_id="wal_alice_polygon")
        codes = []
        for stack in (one, other, one, other):
            channel = keyed_channel(stack.target, key)
            try:
                await BalancesServiceStub(channel).GetWalletBalance(request, timeout=0.5)
                codes.append(grpc.StatusCode.OK)
            except aio.AioRpcError as error:
                codes.append(error.code())
                retry = error.details()
            finally:
                await channel.close()
        # One bucket of three for the key across the replicas, not three per replica.
        assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert "rate limit" in retry


async def test_balances_serve_with_redis_answers_and_fills_it(
    world: DemoWorld, tmp_path: Path, redis_url: str
) -> None:
    async with serve_process(world, tmp_path, cache_redis_url=redis_url) as served:
        request = pb.GetWalletBalanceRequest(wallet_id="wal_alice_ethereum")
        first = await served.balances.GetWalletBalance(request, timeout=10)
        assert first.wallet_id == "wal_alice_ethereum"
        assert len(await snapshot_keys(redis_url)) == 1
        assert await served.balances.GetWalletBalance(request, timeout=10) == first
        assert sum(p.counts["eth_call"] for p in served.proxies.values()) == 1
    assert not any(redis_url in line for line in served.stderr_lines)
