"""The Redis snapshot cache and rate limits as several replicas share them, on a real Redis.

Each "replica" here is its own ``RedisLink`` (its own connection pool) with its
own adapters and ``BalanceQueries``, all in front of one counting source, so the
upstream reads of a burst are counted exactly.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from fractions import Fraction

import pytest
import redis.asyncio as aioredis

from service.balances import BalanceQueries
from service.cache_redis import RedisSnapshotCache
from service.domain import BlockHeader, FeedReading, PegPrice, Snapshot, Token, Wallet
from service.errors import ChainUnavailable, RateLimited
from service.quotas import CallKind, Quota, QuotaPolicy
from service.quotas_redis import RedisCallQuotas
from service.redis_link import RedisLink, open_redis_link
from tests.support.databases import free_port, redis_server

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TENANT = "acme"
ADDRESS = "0x" + "ab" * 20
USDC = Token("USDC", 6, "0x" + "cd" * 20, PegPrice(Fraction(1)))
WALLETS = [
    Wallet(
        f"wal_{i:03d}",
        TENANT,
        "cus_one",
        "polygon",
        f"0x{i:040x}",
        datetime(2024, 1, 1, tzinfo=UTC),
    )
    for i in range(3)
]
BIG = 2**255 + 12_345  # exact or not at all
SNAPSHOT = Snapshot(
    "polygon", 42, 1_700_000_000, {ADDRESS: {"USDC": BIG}}, {"ETH": FeedReading(-1, 8, 7)}
)


class Directory:
    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        return next(w for w in WALLETS if w.wallet_id == wallet_id)

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        return list(WALLETS)


class CountingSource:
    """Counts reads; each waits for ``gate`` and fails while ``failures`` lasts."""

    def __init__(self) -> None:
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self.reads += 1
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ChainUnavailable("polygon", "node down")
        return Snapshot("polygon", 100, 1_700_000_000, {a: {"USDC": BIG} for a in addresses}, {})

    async def head_number(self) -> int:
        return 100

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        raise NotImplementedError


@asynccontextmanager
async def replicas(url: str, count: int, **cache: float) -> AsyncIterator[list[RedisSnapshotCache]]:
    async with AsyncExitStack() as exits:
        caches = []
        for _ in range(count):
            link = open_redis_link(url, None)
            exits.push_async_callback(link.aclose)
            caches.append(
                RedisSnapshotCache(
                    link, cache.get("ttl", 60.0), **{k: v for k, v in cache.items() if k != "ttl"}
                )
            )
        yield caches


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 10 s) until ``condition()`` holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def queries(cache: RedisSnapshotCache, source: CountingSource) -> BalanceQueries:
    return BalanceQueries(
        Directory(),
        {"polygon": source},
        {"polygon": (USDC,)},
        cache,
        base_currency="USD",
        minor_unit_digits=2,
        read_timeout=5.0,
    )


async def test_a_value_set_on_one_replica_is_read_on_another_and_deleted_for_all(
    redis_url: str,
) -> None:
    async with replicas(redis_url, 2, ttl=30.0) as (one, other):
        key = f"snapshot:{TENANT}:{ADDRESS}:https://rpc.example/KEY"
        assert await other.get(key) is None
        await one.set(key, SNAPSHOT)
        assert await other.get(key) == SNAPSHOT  # exact: 2**255 + 12345 and a negative answer
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k.decode() for k in await client.keys("*")]
            assert keys == [one.redis_key(key)]
            # Nothing a caller puts in a key reaches Redis, only a hash of it.
            assert re.fullmatch(r"balances:snap:v1:[0-9a-f]{32}", keys[0])
            assert 0 < await client.pttl(keys[0]) <= 30_000
        finally:
            await client.aclose()
        await other.delete(key)
        assert await one.get(key) is None


async def test_an_unreadable_value_is_a_miss_and_is_replaced(redis_url: str) -> None:
    async with replicas(redis_url, 1) as (cache,):
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.set(cache.redis_key("k"), b'{"n": 1.5}')
            assert await cache.get("k") is None
            source = CountingSource()

            async def read(timeout: float) -> Snapshot:
                return await source.snapshot([ADDRESS], with_prices=False, timeout=timeout)

            assert (await cache.fill("k", read, 5.0)).block_number == 100
            assert (await cache.get("k")) is not None and source.reads == 1
        finally:
            await client.aclose()


async def test_300_concurrent_cold_requests_over_three_replicas_cost_one_upstream_read(
    redis_url: str,
) -> None:
    source = CountingSource()
    source.gate.clear()  # the read waits until every replica has missed
    async with replicas(redis_url, 3) as caches:
        services = [queries(cache, source) for cache in caches]
        calls = [
            asyncio.create_task(services[i % 3].wallet_balance(TENANT, WALLETS[0].wallet_id))
            for i in range(300)
        ]
        await until(lambda: all(s._inflight for s in services))  # every replica is filling
        source.gate.set()
        answers = await asyncio.gather(*calls)
    assert source.reads == 1
    assert sum(c.upstream_reads for c in caches) == 1
    assert {a.amounts[0].raw for a in answers} == {BIG}
    assert {a.block_number for a in answers} == {100}


async def test_a_lease_left_by_a_dead_holder_expires_and_another_replica_reads(
    redis_url: str,
) -> None:
    async with replicas(redis_url, 1, lease_seconds=0.3) as (cache,):
        client = aioredis.Redis.from_url(redis_url)
        try:
            lease = cache.redis_key("k") + ":lease"
            # The holder took the lease and died (kill -9): nobody will renew or release it.
            await client.set(lease, "the dead holder's token", px=300)
            source = CountingSource()

            async def read(timeout: float) -> Snapshot:
                assert await client.get(lease) != b"the dead holder's token"  # it waited
                return await source.snapshot([ADDRESS], with_prices=False, timeout=timeout)

            snapshot = await cache.fill("k", read, 5.0)
            assert snapshot.block_number == 100 and source.reads == 1
            assert await client.exists(lease) == 0  # dropped once the value was stored
        finally:
            await client.aclose()


async def test_a_failed_read_releases_the_lease_and_a_waiting_replica_reads(
    redis_url: str,
) -> None:
    source = CountingSource()
    source.gate.clear()
    source.failures = 1
    async with replicas(redis_url, 2, lease_seconds=30.0) as caches:
        first, second = (queries(cache, source) for cache in caches)
        failing = asyncio.create_task(first.wallet_balance(TENANT, WALLETS[1].wallet_id))
        await until(lambda: source.reads > 0)
        waiting = asyncio.create_task(second.wallet_balance(TENANT, WALLETS[1].wallet_id))
        await until(lambda: bool(second._inflight))
        source.gate.set()
        with pytest.raises(ChainUnavailable):
            await failing
        # Released at once: the waiter reads long before the 30 s lease would run out.
        async with asyncio.timeout(5):
            answer = await waiting
    assert answer.amounts[0].raw == BIG and source.reads == 2


async def test_rate_limits_are_one_bucket_for_every_replica(redis_url: str) -> None:
    policy = QuotaPolicy(Quota(requests_per_second=0.01, burst=3, max_in_flight=10, max_streams=10))
    async with AsyncExitStack() as exits:
        links = [open_redis_link(redis_url, None) for _ in range(2)]
        for link in links:
            exits.push_async_callback(link.aclose)
        one, other = (RedisCallQuotas(link, policy) for link in links)
        for quotas in (one, other, one):
            async with quotas.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                pass
        with pytest.raises(RateLimited) as refused:
            async with other.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                pass
        assert 60 < refused.value.retry_after <= 100  # one token per 100 s
        assert "key_1" in str(refused.value)
        # Another key has a bucket of its own, and no key id reaches Redis.
        async with other.admit(TENANT, "key_2", CallKind.STREAM, time_left=0):
            pass
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = sorted(k.decode() for k in await client.keys("*"))
        finally:
            await client.aclose()
        assert keys == sorted({one.bucket_key("key_1"), one.bucket_key("key_2")})
        assert not any("key_" in k for k in keys)


async def test_a_call_waiting_for_its_token_is_slowed_not_refused(redis_url: str) -> None:
    policy = QuotaPolicy(Quota(requests_per_second=20, burst=1, max_in_flight=10, max_streams=10))
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with AsyncExitStack() as exits:
        link = open_redis_link(redis_url, None)
        exits.push_async_callback(link.aclose)
        quotas = RedisCallQuotas(link, policy, sleep=sleep)
        for _ in range(2):
            async with quotas.admit(TENANT, "key_1", CallKind.UNARY, time_left=10):
                pass
    assert len(slept) == 1 and 0 < slept[0] <= 0.05  # the second token, reserved


async def test_concurrency_quotas_stay_per_process(redis_url: str) -> None:
    policy = QuotaPolicy(
        Quota(requests_per_second=1000, burst=1000, max_in_flight=1, max_streams=1)
    )
    async with AsyncExitStack() as exits:
        links = [open_redis_link(redis_url, None) for _ in range(2)]
        for link in links:
            exits.push_async_callback(link.aclose)
        one, other = (RedisCallQuotas(link, policy) for link in links)
        async with one.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
            with pytest.raises(RateLimited, match="1 calls in flight"):
                async with one.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                    pass
            async with other.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                assert one.in_use("key_1") == (1, 0) and other.in_use("key_1") == (1, 0)
        assert one.in_use("key_1") == (0, 0)


async def test_with_redis_down_reads_go_upstream_and_limits_hold_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = open_redis_link(f"redis://127.0.0.1:{free_port()}/0", None)  # nobody listens
    try:
        source = CountingSource()
        service = queries(RedisSnapshotCache(link, 60.0), source)
        with caplog.at_level(logging.WARNING, logger="service.redis_link"):
            for _ in range(3):
                answer = await service.wallet_balance(TENANT, WALLETS[2].wallet_id)
                assert answer.amounts[0].raw == BIG
            await link.ping()
        assert source.reads == 3  # no cache, but every call answered
        assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
        assert "Redis is unavailable" in caplog.records[0].getMessage()
        policy = QuotaPolicy(
            Quota(requests_per_second=0.01, burst=2, max_in_flight=10, max_streams=10)
        )
        quotas = RedisCallQuotas(link, policy)
        for _ in range(2):
            async with quotas.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                pass
        with pytest.raises(RateLimited):  # the process's own bucket
            async with quotas.admit(TENANT, "key_1", CallKind.UNARY, time_left=0):
                pass
    finally:
        await link.aclose()


async def test_redis_going_away_and_coming_back() -> None:
    source = CountingSource()
    with redis_server() as server:
        link = RedisLink(aioredis.Redis.from_url(server.url(), socket_timeout=1), retry_after=0.0)
        try:
            cache = RedisSnapshotCache(link, 60.0)
            service = queries(cache, source)
            await service.wallet_balance(TENANT, WALLETS[0].wallet_id)
            await service.wallet_balance(TENANT, WALLETS[0].wallet_id)
            assert source.reads == 1
            server.process.kill()
            server.process.wait()
            answer = await service.wallet_balance(TENANT, WALLETS[1].wallet_id)
            assert answer.amounts[0].raw == BIG and source.reads == 2
        finally:
            await link.aclose()


async def test_a_password_protected_redis() -> None:
    with redis_server() as server:
        admin = aioredis.Redis.from_url(server.url())
        try:
            await admin.config_set("requirepass", "pa55word")
        finally:
            await admin.aclose()
        for password, shared in (("pa55word", True), (None, False), ("wrong", False)):
            link = open_redis_link(server.url(), password)
            try:
                assert await link.ping() is shared
                cache = RedisSnapshotCache(link, 60.0)
                await cache.set("k", SNAPSHOT)
                assert (await cache.get("k") == SNAPSHOT) is shared
            finally:
                await link.aclose()
