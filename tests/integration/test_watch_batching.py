"""Watch streams opened together share their initial read: counted at the node, over gRPC.

Each test deploys its own polygon-like world on a fresh anvil node and runs a
real server in front of it through a counting proxy.  Only USDC is configured
and ``max_calls_per_batch`` is 1,000, so one snapshot of 1,000 holders is two
``eth_call``s (1,000 balance reads, then Multicall3's block fields with the
rest): the count says how many reads the streams cost.  The block followers
are not started (what is counted is the streams' own reads), except where a
test says the follower adopts those reads.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import mine, mint
from service.devchain.world import POLYGON, DemoWallet, DemoWorld, deploy_network
from service.domain import PegPrice, Token
from service.settings import WatchSettings
from service.settings.model import LimitsSettings
from tests.support.stack import keyed_channel, running_stack
from tests.support.tenancy_kit import Stubs, new_key
from tests.support.watching import processed, until, watch_customer, watch_wallet

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

STREAMS = 1_000
FUNDED = {0: 1_500_000, 517: 20_000, STREAMS - 1: 2_750_000}  # holder -> raw USDC


def holder(n: int) -> str:
    return to_checksum_address(f"0x{0xBA7C:04x}{n:036x}")


async def usdc_world(start_anvil: AnvilFactory) -> tuple[DemoWorld, Token]:
    """STREAMS wallets of customers of ten wallets each; three of them hold USDC."""
    node = start_anvil(POLYGON.chain_id)
    await node.start()
    network = await deploy_network(POLYGON, node.url)
    world = DemoWorld(networks={"polygon": network})
    world.wallets.extend(
        DemoWallet(f"wal_s{i}", f"cus_s{i // 10}", "polygon", holder(i), {}) for i in range(STREAMS)
    )
    for i, raw in FUNDED.items():
        await mint(node.url, network.tokens["USDC"], holder(i), raw)
    return world, Token("USDC", 6, network.tokens["USDC"], PegPrice(Fraction(1)))


LIMITS = LimitsSettings(requests_per_second=10_000, burst=10_000, max_streams=2 * STREAMS)


async def test_a_thousand_streams_opened_together_cost_a_few_eth_calls(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    world, usdc = await usdc_world(start_anvil)
    changes = {"polygon": {"tokens": (usdc,), "max_calls_per_batch": 1000}}
    async with running_stack(world, tmp_path, network_changes=changes, limits=LIMITS) as stack:
        stack.reset_counts()
        calls = [watch_wallet(stack, f"wal_s{i}") for i in range(STREAMS)]
        try:
            firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 120)
            eth_calls = stack.eth_calls()["polygon"]
            reads = {p[1] for p in stack.proxies["polygon"].calls("eth_call")}
            print(f"{STREAMS} streams opened at once: {eth_calls} eth_calls, blocks {reads}")
            assert eth_calls <= 5  # was one read per stream: 1,000
            assert all(m.initial and not m.changes for m in firsts)
            held = {m.wallet_id: [(b.currency, b.amount) for b in m.balances] for m in firsts}
            assert held["wal_s0"] == [("USDC", "1.50")]
            assert held["wal_s517"] == [("USDC", "0.02")]
            assert held[f"wal_s{STREAMS - 1}"] == [("USDC", "2.75")]
            assert held["wal_s1"] == [("USDC", "0.00")]
            assert [m.wallet_id for m in firsts] == [f"wal_s{i}" for i in range(STREAMS)]
            # Each stream's read went to its tenant's cache, as a read of its own would.
            stack.reset_counts()
            again = await stack.stub.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id="wal_s0")
            )
            assert again.block_number == firsts[0].block_number
            assert stack.eth_calls()["polygon"] == 0
        finally:
            for call in calls:
                call.cancel()


async def test_the_follower_adopts_the_streams_initial_reads_instead_of_reading_again(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    """Streams opened with the follower running: it takes their addresses from their
    initial reads at that block, so nothing is read twice; the next block is one read."""
    world, usdc = await usdc_world(start_anvil)
    changes = {"polygon": {"tokens": (usdc,), "max_calls_per_batch": 1000}}
    watch = WatchSettings(poll_interval_seconds=0.05)
    async with running_stack(
        world, tmp_path, network_changes=changes, limits=LIMITS, watch=watch
    ) as stack:
        follower = stack.service.followers["polygon"]
        stack.service.start_watching()
        opened = 300
        calls = [watch_wallet(stack, f"wal_s{i}") for i in range(opened)]
        try:
            firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 60)
            block = firsts[0].block_number
            assert {m.block_number for m in firsts} == {block}  # no block was mined
            await processed(follower, block)
            await asyncio.sleep(0.3)  # several more ticks of the follower
            pinned = [p for p in stack.proxies["polygon"].calls("eth_call") if p[1] != "latest"]
            initial = stack.eth_calls()["polygon"]
            print(f"{opened} streams with the follower running: {initial} eth_calls")
            assert pinned == [] and follower.snapshots_read == 0  # it read nothing itself
            # The next block: one read of every address (300 calls: one eth_call), and
            # the change reaches its stream.
            stack.reset_counts()
            await mint(world.networks["polygon"].rpc_url, usdc.address or "", holder(7), 70_000)
            message = await asyncio.wait_for(calls[7].read(), 10)
            assert [(c.currency, c.amount) for c in message.changes] == [("USDC", "0.07")]
            await until(lambda: follower.snapshots_read == 1)
            read = stack.proxies["polygon"].calls("eth_call")
            assert len(read) == 1 and read[0][1] == hex(message.block_number)
        finally:
            for call in calls:
                call.cancel()


async def test_streams_of_two_tenants_on_one_address_each_get_their_own_answer(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    """Two tenants' streams on one address and a customer watch, opened together, each get
    their own wallets; a third tenant, not among them, then reads for itself."""
    world, usdc = await usdc_world(start_anvil)
    changes = {"polygon": {"tokens": (usdc,)}}
    async with running_stack(world, tmp_path, network_changes=changes, limits=LIMITS) as stack:
        other = keyed_channel(stack.target, await new_key(stack, "tenant-b"))
        late = keyed_channel(stack.target, await new_key(stack, "tenant-c"))
        b, c = Stubs(other), Stubs(late)
        try:
            imported = await b.wallets.ImportWallet(
                wallets_pb2.ImportWalletRequest(
                    customer_id="cus_b", network="polygon", address=holder(0)
                )
            )
            c_wallet = await c.wallets.ImportWallet(
                wallets_pb2.ImportWalletRequest(
                    customer_id="cus_c", network="polygon", address=holder(0)
                )
            )
            stack.reset_counts()
            a_call = watch_wallet(stack, "wal_s0")
            customer_call = watch_customer(stack, "cus_s51")  # wal_s510..519, 517 funded
            b_call = b.balances.WatchWalletBalance(
                pb.WatchWalletBalanceRequest(wallet_id=imported.wallet.wallet_id)
            )
            a_first, customer_first, b_first = await asyncio.wait_for(
                asyncio.gather(a_call.read(), customer_call.read(), b_call.read()), 30
            )
            # Opened together they usually share one read; how many is up to the timing.
            print(f"three streams of two tenants: {stack.eth_calls()['polygon']} eth_calls")
            assert a_first.wallet_id == "wal_s0" and b_first.wallet_id == imported.wallet.wallet_id
            for first in (a_first, b_first):
                assert [(x.currency, x.amount) for x in first.balances] == [("USDC", "1.50")]
            assert b_first.block_number == a_first.block_number
            assert [w.wallet_id for w in customer_first.wallets] == [
                f"wal_s{i}" for i in range(510, 520)
            ]
            assert customer_first.total_balance.amount == "0.02"
            # A tenant who was not in the batch reads for itself, at the new head.
            await mine(world.networks["polygon"].rpc_url)
            stack.reset_counts()
            c_answer = await c.balances.GetWalletBalance(
                pb.GetWalletBalanceRequest(wallet_id=c_wallet.wallet.wallet_id)
            )
            assert stack.eth_calls()["polygon"] == 1
            assert c_answer.block_number == a_first.block_number + 1
            for call in (a_call, customer_call, b_call):
                call.cancel()
        finally:
            await other.close()
            await late.close()
