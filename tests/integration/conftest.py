"""Integration fixtures: real anvil nodes with the dev Multicall3 in place, and running servers."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import pytest_asyncio

from service.devchain.anvil import AnvilFactory, AnvilNode
from service.devchain.deploy import place_multicall3
from service.devchain.world import (
    ETHEREUM,
    POLYGON,
    DemoWorld,
    demo_wallets,
    deploy_network,
    fund_wallets,
)
from tests.support.databases import PostgresServer, RedisServer, postgres_server, redis_server
from tests.support.stack import Stack, running_stack


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def anvil() -> AsyncIterator[AnvilNode]:
    """One anvil (chain id 31337) for the whole session, Multicall3 at the canonical address."""
    async with AnvilNode(chain_id=31337) as node:
        await place_multicall3(node.url)
        yield node


@pytest_asyncio.fixture(loop_scope="session")
async def start_anvil() -> AsyncIterator[AnvilFactory]:
    """Factory for fresh, stoppable nodes: ``async with start_anvil(137) as node: ...``.

    The node is started by ``async with`` (or ``await node.start()``); Multicall3
    is not placed. Any node still running when the test ends is closed.
    """
    nodes: list[AnvilNode] = []

    def factory(
        chain_id: int, *, block_time: float | None = None, keep_state: bool = True
    ) -> AnvilNode:
        node = AnvilNode(chain_id, block_time=block_time, keep_state=keep_state)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        await node.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def world() -> AsyncIterator[DemoWorld]:
    """The demo world on two real chains (polygon 31337, ethereum 31338), funded.

    Tests must not change its balances: a test that moves funds builds its own.
    """
    async with AsyncExitStack() as stack:
        world = DemoWorld()
        for plan in (POLYGON, ETHEREUM):
            node = await stack.enter_async_context(AnvilNode(chain_id=plan.chain_id))
            world.networks[plan.name] = await deploy_network(plan, node.url)
        await fund_wallets(world, demo_wallets())
        yield world


@pytest_asyncio.fixture(loop_scope="session")
async def stack(world: DemoWorld, tmp_path: Path) -> AsyncIterator[Stack]:
    """A fresh server (cold cache, new directory) over the shared world."""
    async with running_stack(world, tmp_path) as running:
        yield running


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the session; tests take a database of their own."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    return postgres.create_database(f"balances_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """One throwaway Redis for the session."""
    with redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis: RedisServer) -> str:
    """The session's Redis, emptied first (tests run one at a time)."""
    subprocess.run(
        ["redis-cli", "-p", str(redis.port), "FLUSHALL"],
        check=True,
        capture_output=True,
        timeout=10,
    )
    return redis.url()
