"""Providers failing the way they really fail, one fault at a time, in front of real anvil.

Every fault of ``FaultProxy`` is tried with the faulty provider as the only URL
and as the first of two (the second healthy).  Every amount returned is compared
with the chain at the block the response names.  The promise: with a healthy
second URL no request fails; with one URL failures are UNAVAILABLE naming the
network (or DEADLINE_EXCEEDED), never INTERNAL; no amount is ever wrong; when
the fault ends, the first URL answers again within ``recovery_seconds`` (plus
slack).  Then a node killed and restarted, and block numbers under lagging
providers.  Timings are measured by ``scripts/provider_faults.py``, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from service.devchain.anvil import AnvilFactory, AnvilNode
from service.devchain.deploy import mine, mint
from service.devchain.world import DemoWorld
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.provider_faults import (
    NETWORK,
    ONE_URL_CODES,
    ChainTruth,
    Outcome,
    Report,
    Tuning,
    fault_scenario,
    holder,
    killed_node_scenario,
    polygon_world,
    read_many,
    read_once,
    serving,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TUNING = Tuning()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chain() -> AsyncIterator[tuple[AnvilNode, DemoWorld]]:
    """One polygon-like chain for the module's fault scenarios (balances never change)."""
    async with AnvilNode(chain_id=31337) as node:
        yield node, await polygon_world(node.url)


def assert_kept_the_promise(report: Report) -> None:
    assert report.fault_calls > 0, "the faulty provider was never asked: the fault did not bite"
    assert report.problems(TUNING) == []
    if report.urls == 1:
        assert report.failed, "one faulty URL, yet nothing failed: the fault did not bite"
    else:
        assert report.healthy_answers > 0  # the second URL answered


@pytest.mark.parametrize("urls", [1, 2], ids=["one-url", "two-urls"])
@pytest.mark.parametrize("fault", list(Fault), ids=[f.name.lower() for f in Fault])
async def test_a_provider_fault(
    chain: tuple[AnvilNode, DemoWorld], tmp_path: Path, fault: Fault, urls: int
) -> None:
    node, world = chain
    report = await fault_scenario(world, node.url, tmp_path, fault, urls, TUNING)
    assert_kept_the_promise(report)


async def test_retry_after_is_honoured(chain: tuple[AnvilNode, DemoWorld], tmp_path: Path) -> None:
    """Rate limited with ``Retry-After``: the provider is not asked again before then."""
    node, world = chain
    truth = ChainTruth(world, node.url)
    async with (
        FaultProxy(node.url) as faulty,
        FaultProxy(node.url) as healthy,
        serving(world, tmp_path, [faulty.url, healthy.url], TUNING) as server,
    ):
        faulty.retry_after = "3"  # longer than recovery_seconds: the provider's word wins
        await faulty.set_fault(Fault.HTTP_429)
        first = await read_once(server.stub, "wallet", "wal_p1", TUNING.deadline, truth)
        asked = sum(faulty.counts.values())
        await faulty.set_fault(None)
        later = await read_many(server.stub, truth, TUNING)  # well within the 3 s
        assert sum(faulty.counts.values()) == asked
        assert first.ok and all(o.ok and not o.wrong for o in later)
    await truth.aclose()


# --- a node killed and restarted -------------------------------------------------------


@pytest.mark.parametrize("urls", [1, 2], ids=["one-url", "two-urls"])
async def test_a_node_killed_and_restarted(tmp_path: Path, urls: int) -> None:
    report = await killed_node_scenario(tmp_path, urls, TUNING)
    assert report.problems(TUNING) == []
    assert bool(report.failed) == (urls == 1)  # with a twin, nothing failed


# --- block numbers only move forward ---------------------------------------------------------


@pytest.mark.parametrize("urls", [1, 2], ids=["one-url", "two-urls"])
async def test_block_numbers_never_go_back_when_fresh_and_lagging_nodes_alternate(
    start_anvil: AnvilFactory, tmp_path: Path, urls: int
) -> None:
    """Each step mints (a new block with a new balance), then the first provider is
    fresh on even steps and lagging 5 blocks on odd ones (the second, the other way
    round): no response may carry a block lower than an earlier one, and every
    amount is the chain's at that block."""
    node = start_anvil(31337)
    await node.start()
    world = await polygon_world(node.url)
    usdc = world.networks[NETWORK].tokens["USDC"]
    truth = ChainTruth(world, node.url)
    outcomes: list[Outcome] = []
    async with FaultProxy(node.url) as first, FaultProxy(node.url) as second:
        proxies = [first, second][:urls]
        async with serving(world, tmp_path, [p.url for p in proxies], TUNING) as server:
            for step in range(16):
                await mint(node.url, usdc, holder(2), 1_000 + step)
                for i, proxy in enumerate(proxies):
                    await proxy.set_fault(Fault.LAGGING if (step + i) % 2 else None)
                kind, ident = ("wallet", "wal_p2") if step % 3 else ("customer", "cus_p")
                outcomes.append(await read_once(server.stub, kind, ident, TUNING.deadline, truth))
    await truth.aclose()
    served = [o for o in outcomes if o.ok]
    # Fresh reads never go back on the network; nor does any answer to the same question
    # (a stale one is the last good read of that question, which may be older than
    # another question's fresh read).
    fresh = [b for o in served if not o.stale for b in o.blocks]
    assert fresh == sorted(fresh)
    for key in {o.key for o in served}:
        same = [b for o in served if o.key == key for b in o.blocks]
        assert same == sorted(same), key
    blocks = [b for o in served for b in o.blocks]
    assert [w for o in outcomes for w in o.wrong] == []
    assert {o.code for o in outcomes if not o.ok} <= ONE_URL_CODES
    if urls == 2:
        assert len(served) == len(outcomes)
        assert len(set(blocks)) > 8  # it did move forward, step by step
    else:
        assert served[-1].blocks[0] > served[0].blocks[0]
        # A lagging lone node gives no older fresh answer: the read fails, or is the
        # question's last good read, marked stale.
        assert len(served) < len(outcomes) or any(o.stale for o in served)


async def test_a_provider_lagging_beyond_max_lag_blocks_is_skipped(
    chain: tuple[AnvilNode, DemoWorld], tmp_path: Path
) -> None:
    """Once a fresher head has been seen, a provider more than ``max_lag_blocks`` behind it
    is a fault at its first read: no second (pinned) read is tried on it."""
    node, world = chain
    truth = ChainTruth(world, node.url)
    tight = Tuning(max_lag_blocks=2)
    async with (
        FaultProxy(node.url) as lagging,
        FaultProxy(node.url) as fresh,
        serving(world, tmp_path, [lagging.url, fresh.url], tight) as server,
    ):
        await lagging.set_fault(Fault.HTTP_503)  # so the fresh head is seen first
        head = await read_once(server.stub, "wallet", "wal_p1", tight.deadline, truth)
        await lagging.set_fault(Fault.LAGGING)
        await mine(node.url, 1)
        await asyncio.sleep(tight.recovery_seconds)  # its 503 rest is over: it is asked
        lagging.reset()
        later = await read_many(server.stub, truth, tight)
    await truth.aclose()
    assert head.ok and all(o.ok and not o.wrong for o in later)
    assert all(o.blocks[0] > head.blocks[0] for o in later)
    pinned = [c for c in lagging.calls("eth_call") if c[1] != "latest"]
    assert lagging.calls("eth_call") and pinned == []
