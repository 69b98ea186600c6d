"""Tenants cannot see each other's reads: not by block number, not by the path an answer takes.

Three tenants hold a wallet at the same polygon address.  What tenant B gets
right after tenant A read the address must be what a tenant nobody read for
(C) gets: the same block, and one upstream ``eth_call`` each.  A shared cache
would hand B A's older block with no upstream call; a shared in-flight read
would let B's answer ride on A's.
"""

from __future__ import annotations

import asyncio

import pytest

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2
from service.devchain.deploy import mine
from tests.support.stack import Stack, keyed_channel
from tests.support.tenancy_kit import Stubs, new_key

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SHARED = "0xd3e0000000000000000000000000000000000001"  # alice's polygon wallet in the demo world


async def a_tenant_with_the_shared_address(stack: Stack, tenant: str) -> tuple[Stubs, str, object]:
    channel = keyed_channel(stack.target, await new_key(stack, tenant))
    api = Stubs(channel)
    imported = await api.wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(
            customer_id=f"cus_{tenant.replace('-', '_')}", network="polygon", address=SHARED
        )
    )
    return api, imported.wallet.wallet_id, channel


async def balance(api: Stubs, wallet_id: str) -> pb.GetWalletBalanceResponse:
    return await api.balances.GetWalletBalance(pb.GetWalletBalanceRequest(wallet_id=wallet_id))


def seen(response: pb.GetWalletBalanceResponse) -> tuple[object, ...]:
    """Everything a caller sees but its own wallet ID."""
    return (response.network, list(response.balances), response.last_updated, response.block_number)


async def test_a_read_by_one_tenant_is_invisible_to_another(stack: Stack) -> None:
    a = Stubs(stack.keyed)  # tenant "default" owns wal_alice_polygon at SHARED
    b, b_wallet, b_channel = await a_tenant_with_the_shared_address(stack, "tenant-b")
    c, c_wallet, c_channel = await a_tenant_with_the_shared_address(stack, "tenant-c")
    polygon = stack.world.networks["polygon"].rpc_url
    try:
        stack.reset_counts()
        first = await balance(a, "wal_alice_polygon")
        assert stack.eth_calls()["polygon"] == 1
        again = await balance(a, "wal_alice_polygon")
        assert stack.eth_calls()["polygon"] == 1, "A's second read is A's cache"
        assert again.block_number == first.block_number

        await mine(polygon)  # the chain moves on; A's cached read is now one block old
        stack.reset_counts()
        b_answer = await balance(b, b_wallet)
        b_calls = stack.eth_calls()["polygon"]
        stack.reset_counts()
        c_answer = await balance(c, c_wallet)  # nobody has read for C
        c_calls = stack.eth_calls()["polygon"]
        assert b_calls == c_calls == 1, "B's answer took the path of one nobody read"
        assert seen(b_answer) == seen(c_answer)
        assert b_answer.block_number == first.block_number + 1
    finally:
        await b_channel.close()  # type: ignore[attr-defined]
        await c_channel.close()  # type: ignore[attr-defined]


async def test_concurrent_reads_of_two_tenants_are_not_shared(stack: Stack) -> None:
    a = Stubs(stack.keyed)
    b, b_wallet, b_channel = await a_tenant_with_the_shared_address(stack, "tenant-b2")
    try:
        await mine(stack.world.networks["polygon"].rpc_url)  # nothing cached at the new head
        stack.reset_counts()
        a_answer, b_answer = await asyncio.gather(
            balance(a, "wal_alice_polygon"), balance(b, b_wallet)
        )
        # One coalesced read would be 1; each tenant's own read is 2.
        assert stack.eth_calls()["polygon"] == 2
        assert seen(a_answer) == seen(b_answer)
    finally:
        await b_channel.close()  # type: ignore[attr-defined]
