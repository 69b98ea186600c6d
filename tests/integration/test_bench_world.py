"""The bench's world builder (scripts/bench/world.py), on a tiny world: no timings here.

``make bench`` funds tens of thousands of wallets by writing the tokens' storage
directly; if the storage slot or layout were wrong, every balance the bench
reads would be zero and its figures meaningless without anyone noticing.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from scripts.bench.world import Sizes, build_chains, build_directories, rpc_batch
from service.store.sqlite import open_sqlite_stores

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TINY = Sizes(
    repeats=1,
    cold_samples=2,
    big_samples=1,
    cold_wallets_per_network=3,
    big_wallets=20,
    watchers=5,
    directory_wallets=40,
    directory_samples=2,
    profile_cold_calls=0,
    profile_big_calls=0,
)


async def test_bench_world_funds_wallets_through_storage_and_registers_them(
    tmp_path: Path,
) -> None:
    async with AsyncExitStack() as stack:
        world = await build_chains(stack, TINY)
        main, counted = tmp_path / "main.sqlite3", tmp_path / "counted.sqlite3"
        await build_directories(world, TINY, main, counted)

        # Every token balance and native balance reads back through the chain itself.
        async with aiohttp.ClientSession() as session:
            for name, holders in world.cold_addresses.items():
                chain = world.demo.networks[name]
                calls = [
                    (
                        "eth_call",
                        [{"to": token, "data": "0x70a08231" + "0" * 24 + h[2:].lower()}, "latest"],
                    )
                    for token in chain.tokens.values()
                    for h in holders
                ]
                calls += [("eth_getBalance", [h, "latest"]) for h in holders]
                answers = [int(a, 16) for a in await rpc_batch(session, chain.rpc_url, calls)]
                expected = [
                    (i + 1) * 1_000_000 + t * 10_000
                    for t in range(len(chain.tokens))
                    for i in range(len(holders))
                ] + [(i + 1) * 10**15 for i in range(len(holders))]
                assert answers == expected, name

    assert len(world.cold) == TINY.repeats * TINY.cold_samples
    assert len(world.big) == TINY.repeats * TINY.big_samples
    assert world.warm is not None and len(world.warm.wallet_ids) == 1
    async with await open_sqlite_stores(main) as stores:
        cold = await stores.wallets.customer_wallets(world.cold[1].name, "cus_cold")
        assert sorted(w.address for w in cold) == sorted(
            a for addresses in world.cold_addresses.values() for a in addresses
        )
        big = await stores.wallets.customer_wallets(world.big[0].name, "cus_big")
        assert len(big) == TINY.big_wallets
        for customer in world.directory_customers:
            found = await stores.wallets.customer_wallets(world.directory_tenant, customer)
            assert len(found) == TINY.directory_customer_wallets
    async with await open_sqlite_stores(counted) as stores:
        assert world.capture_watch is not None
        watched = await stores.wallets.customer_wallets("watch", "cus_watch")
        assert [w.address for w in watched] == world.big_addresses[: TINY.watchers]
