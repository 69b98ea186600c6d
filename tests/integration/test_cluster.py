"""Cluster coordination on real servers: leases on PostgreSQL, Redis and a file shared by
two processes, and a watch stream on a replica that does not lead the block follower.

Timings are printed, never asserted (the takeover bound is ``lease + 2 * poll``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from balances.v1 import balances_pb2 as pb
from service.cluster.coordination import follower_lease_name
from service.cluster.leader import Leader
from service.cluster.leases import FileLease, PostgresLease, RedisLease, postgres_connector
from service.devchain.anvil import AnvilFactory
from service.settings import WatchSettings
from tests.integration.test_watch import POLL, holder, own_world, send_usdc
from tests.support.stack import running_stack
from tests.support.watching import Watch, changes_of, until, watch_wallet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NAME = follower_lease_name("polygon")
LEASE = 2.0  # seconds


def pg_lease(url: str) -> PostgresLease:
    return PostgresLease(NAME, postgres_connector(url, None, NAME, LEASE), timeout=LEASE)


def leader(lease: PostgresLease | RedisLease | FileLease, log: list[str], who: str) -> Leader:
    async def elected() -> None:
        log.append(f"{who} leads")

    async def deposed() -> None:
        log.append(f"{who} stops")

    return Leader(lease, elected=elected, deposed=deposed, check_interval=POLL)


async def test_one_of_two_postgres_contenders_leads_and_the_other_takes_over_when_it_dies(
    postgres_url: str,
) -> None:
    log: list[str] = []
    a_lease, b_lease = pg_lease(postgres_url), pg_lease(postgres_url)
    a = leader(a_lease, log, "a")
    a.start()
    await until(lambda: a.leading)
    b = leader(b_lease, log, "b")
    b.start()
    await asyncio.sleep(5 * POLL)
    assert log == ["a leads"] and not b.leading
    # The leader's session dies (a killed process, a cut connection): the lock goes with it.
    admin = await asyncpg.connect(postgres_url)
    try:
        pid = a_lease._connection.get_server_pid()  # which session to kill
        started = time.monotonic()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await until(lambda: b.leading and not a.leading, timeout=LEASE + 2 * POLL + 5)
        print(f"takeover after {time.monotonic() - started:.2f}s (lease {LEASE}s, poll {POLL}s)")
        # (a hears of its loss when its connection reports it: b may lead a moment before)
        assert sorted(log[:3]) == ["a leads", "a stops", "b leads"]
        held = await admin.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
        assert held == 1
    finally:
        await admin.close()
        await a.aclose()
        await b.aclose()
    assert log[-1] == "b stops" and not a.leading


async def test_a_postgres_lease_released_on_shutdown_is_taken_at_the_next_check(
    postgres_url: str,
) -> None:
    first, second = pg_lease(postgres_url), pg_lease(postgres_url)
    assert await first.keep() and await first.keep()
    assert not await second.keep()
    await first.release()
    assert await second.keep()
    assert not await first.keep()
    await first.release()
    await second.release()


async def test_an_unreachable_postgres_is_no_lease_and_names_no_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql://secret-user@127.0.0.1:1/db"
    lease = PostgresLease(NAME, postgres_connector(url, "hunter2", NAME, LEASE), timeout=LEASE)
    assert await lease.keep() is False
    assert "PostgreSQL failed" in caplog.text
    assert "secret-user" not in caplog.text and "hunter2" not in caplog.text
    await lease.release()


async def test_a_redis_lease_expires_without_renewal_and_is_deleted_only_by_its_holder(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        a = RedisLease(NAME, client, lease_seconds=0.5, timeout=1)
        b = RedisLease(NAME, client, lease_seconds=0.5, timeout=1)
        assert await a.keep() and not await b.keep()
        await asyncio.sleep(0.3)
        assert await a.keep()  # renewed: still held past the first expiry
        await asyncio.sleep(0.3)
        assert not await b.keep()
        await b.release()  # not the holder: deletes nothing
        assert await client.get(NAME) is not None
        await asyncio.sleep(0.7)  # a stops renewing (it died): the lease expires
        assert await b.keep()
        assert not await a.keep()  # the old holder learns it lost the lease
        await a.release()
        assert await client.get(NAME) is not None
        await b.release()
        assert await client.get(NAME) is None
    finally:
        await client.aclose()


async def test_a_file_lease_is_held_by_one_process_and_freed_when_it_is_killed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "wallets.sqlite3.lock"
    holder_code = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from service.cluster.leases import FileLease\n"
        f"lease = FileLease('x', Path({str(path)!r}))\n"
        "assert asyncio.run(lease.keep())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", holder_code, stdout=asyncio.subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"held\n"
        mine = FileLease("x", path)
        assert await mine.keep() is False
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 10)
        assert await mine.keep() is True  # the kernel dropped the dead process's lock
        await mine.release()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_stream_on_a_replica_that_does_not_lead_gets_the_leaders_changes(
    start_anvil: AnvilFactory, tmp_path: Path, redis_url: str
) -> None:
    """Two replicas (one SQLite file, so a file lease; one Redis): the follower runs on A,
    the stream is on B, and B's message is what a single process sends."""
    world = await own_world(start_anvil)
    watch = WatchSettings(poll_interval_seconds=POLL)
    async with (
        running_stack(world, tmp_path, watch=watch, cache_redis_url=redis_url) as a,
        running_stack(world, tmp_path, watch=watch, cache_redis_url=redis_url) as b,
    ):
        a.service.cluster.start()
        await until(lambda: a.service.cluster.follower_leader("polygon").leading)
        b.service.cluster.start()
        assert b.service.cluster.bus is not None
        await asyncio.wait_for(b.service.cluster.bus.relay.subscribed(), 5)
        await asyncio.sleep(3 * POLL)
        assert not b.service.cluster.follower_leader("polygon").leading

        stream = Watch.start(watch_wallet(b, "wal_w1"))
        first = await stream.next()
        assert first.initial
        # The leader follows the address once B's registry has told it (a baseline read).
        await until(lambda: a.service.followers["polygon"].snapshots_read > 0)
        mined_in = await send_usdc(a, holder(1), 250_000)
        message = await stream.next(timeout=10)
        assert message.block_number == mined_in and not message.initial
        assert changes_of(message) == {"USDC": ("1.00", "1.25")}
        assert message.coalesced_updates == 0
        assert b.service.followers["polygon"].snapshots_read == 0  # B read nothing itself
        # B's cache was refreshed from the relayed block, as a single process's would be.
        b.reset_counts()
        balance = await b.stub.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id="wal_w1"))
        assert {x.currency: x.amount for x in balance.balances}["USDC"] == "1.25"
        assert b.eth_calls()["polygon"] == 0
        assert await stream.none_within(5 * POLL)  # exactly one message
        stream.call.cancel()
        await b.service.cluster.aclose()
        await a.service.cluster.aclose()
