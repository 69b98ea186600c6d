"""Customer watch streams that follow the customer, over real sockets on a real anvil chain.

A wallet registered mid-stream joins it (its first balance, then its changes);
a deleted one is listed once more, removed, and never again; every message
carries the customer total, checked here to the cent against the balances the
stream itself sent, valued independently (stablecoins at 1, POL at its feed's
price at that block), and against GetCustomerBalances.
"""

from __future__ import annotations

import asyncio
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from balances.v1 import balances_pb2 as pb
from balances.v1 import wallets_pb2, wallets_pb2_grpc
from service.api.services import API_SERVICES
from service.devchain.anvil import AnvilFactory
from service.devchain.deploy import set_feed_answer, set_feed_round, set_native_balance
from service.devchain.rpc import rpc_call
from service.gateway.limits import RestLimits
from service.gateway.serve import start_gateway
from tests.integration.test_watch import (
    POLL,
    caught_up,
    holder,
    send_usdc,
    url,
    watching_stack,
)
from tests.support.stack import Stack
from tests.support.watching import Watch, changes_of, watch_customer

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FEED_UNIT = 10**8  # the demo feeds answer with 8 decimals
NEWCOMER = holder(3)  # funded, registered to cus_w only mid-stream


class Customer:
    """What a consumer of a customer watch knows: each wallet's latest balances."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, str]] = {}

    def apply(self, message: Any) -> None:
        for wallet in message.wallets:
            if wallet.removed:
                self.latest.pop(wallet.wallet_id)
            else:
                self.latest[wallet.wallet_id] = {b.currency: b.amount for b in wallet.balances}

    def total(self, pol_price: Fraction) -> str:
        """Every amount at 1, POL at ``pol_price``; summed exactly, rounded half to even."""
        value = sum(
            (
                Fraction(amount) * (pol_price if currency == "POL" else 1)
                for balances in self.latest.values()
                for currency, amount in balances.items()
            ),
            Fraction(0),
        )
        cents = int(round(value, 2) * 100)  # Fraction's round: half to even
        return f"{cents // 100}.{cents % 100:02d}"


def total_of(message: Any) -> str:
    assert message.HasField("total_balance") and message.total_balance.currency == "USD"
    return str(message.total_balance.amount)


async def fund_newcomer(stack: Stack) -> None:
    """7.00 USDC and 0.3 POL, before anyone watches."""
    await send_usdc(stack, NEWCOMER, 7_000_000)
    await set_native_balance(url(stack), NEWCOMER, 3 * 10**17)


async def import_wallet(stack: Stack, address: str) -> str:
    wallets = wallets_pb2_grpc.WalletsServiceStub(stack.keyed)
    response = await wallets.ImportWallet(
        wallets_pb2.ImportWalletRequest(customer_id="cus_w", network="polygon", address=address)
    )
    return str(response.wallet.wallet_id)


async def delete_wallet(stack: Stack, wallet_id: str) -> None:
    wallets = wallets_pb2_grpc.WalletsServiceStub(stack.keyed)
    await wallets.DeleteWallet(
        wallets_pb2.DeleteWalletRequest(customer_id="cus_w", wallet_id=wallet_id)
    )


async def fresh_total(stack: Stack) -> str:
    response = await stack.stub.GetCustomerBalances(
        pb.GetCustomerBalancesRequest(customer_id="cus_w")
    )
    return str(response.total_balance.amount)


def pol_feed(stack: Stack) -> str:
    return stack.world.networks["polygon"].feed


async def test_a_wallet_registered_mid_stream_joins_and_every_message_has_the_total(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        await fund_newcomer(stack)
        customer, known = Watch.start(watch_customer(stack, "cus_w")), Customer()
        first = await customer.next()
        known.apply(first)
        assert first.initial and set(known.latest) == {"wal_w1", "wal_w2"}
        assert total_of(first) == known.total(Fraction(1, 2)) == await fresh_total(stack)

        # Registered: listed with its current balances, no changes, then counted.
        wallet_id = await import_wallet(stack, NEWCOMER)
        joined = await customer.next()
        assert not joined.initial
        assert [w.wallet_id for w in joined.wallets] == [wallet_id]
        (newcomer,) = joined.wallets
        assert {b.currency: b.amount for b in newcomer.balances}["USDC"] == "7.00"
        assert {b.currency: b.amount for b in newcomer.balances}["POL"] == "0.30"
        assert not newcomer.changes and newcomer.block_hash == "" and not newcomer.removed
        known.apply(joined)
        # 1.00 + 0.5 x 1 POL + 2.00 + 3.00 RBT, then + 7.00 + 0.5 x 0.3 POL
        assert total_of(joined) == known.total(Fraction(1, 2)) == "13.65"
        assert total_of(joined) == await fresh_total(stack)

        # Its changes follow, with the total.
        await asyncio.sleep(3 * POLL)
        block = await send_usdc(stack, NEWCOMER, 500_000)
        change = await customer.next()
        assert [(w.wallet_id, w.block_number) for w in change.wallets] == [(wallet_id, block)]
        assert changes_of(change.wallets[0]) == {"USDC": ("7.00", "7.50")}
        assert change.wallets[0].block_hash.startswith("0x")
        known.apply(change)
        assert total_of(change) == known.total(Fraction(1, 2)) == "14.15"

        # POL goes to $0.85: the next message values every POL held at its block's price,
        # the unchanged wallets' too: 1.3 POL x 0.85 = 1.105, + 13.500001 USDC/RBT = 14.605001.
        await set_feed_answer(url(stack), pol_feed(stack), 85 * FEED_UNIT // 100)
        await send_usdc(stack, holder(1), 1)
        moved = await customer.next()
        assert [w.wallet_id for w in moved.wallets] == ["wal_w1"]
        known.apply(moved)
        assert total_of(moved) == known.total(Fraction(85, 100)) == "14.61"
        assert not moved.HasField("total_stale")
        customer.call.cancel()


async def test_a_deleted_wallet_leaves_with_a_final_message_and_is_never_named_again(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        customer, known = Watch.start(watch_customer(stack, "cus_w")), Customer()
        known.apply(await customer.next())
        last_sent = known.latest["wal_w2"]
        await delete_wallet(stack, "wal_w2")
        removal = await customer.next()
        (gone,) = removal.wallets
        assert (gone.wallet_id, gone.removed) == ("wal_w2", True)
        assert {b.currency: b.amount for b in gone.balances} == last_sent and not gone.changes
        known.apply(removal)
        assert total_of(removal) == known.total(Fraction(1, 2)) == "1.50"

        # Its changes are no one's concern any more.
        await asyncio.sleep(3 * POLL)
        await send_usdc(stack, holder(2), 1_000)
        await caught_up(stack)
        assert await customer.none_within(5 * POLL)
        block = await send_usdc(stack, holder(1), 1_000)
        message = await customer.next()
        assert [(w.wallet_id, w.block_number) for w in message.wallets] == [("wal_w1", block)]
        assert total_of(message) == "1.50"  # 1.001 USDC + 0.50: rounds to 1.50

        # The last wallet leaves: announced, then NOT_FOUND.
        await delete_wallet(stack, "wal_w1")
        last = await customer.next()
        assert [(w.wallet_id, w.removed) for w in last.wallets] == [("wal_w1", True)]
        assert total_of(last) == "0.00"
        await asyncio.wait_for(customer.ended.wait(), 5)
        assert customer.error is not None
        assert customer.error.code() == grpc.StatusCode.NOT_FOUND
        assert customer.messages.empty()


async def test_wallets_changed_elsewhere_are_found_by_the_stream(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    """A registration or deletion this process's hub is not told of (another replica's,
    a CLI import): straight into the store, as another writer would."""
    async with watching_stack(start_anvil, tmp_path) as stack:
        await fund_newcomer(stack)
        customer, known = Watch.start(watch_customer(stack, "cus_w")), Customer()
        known.apply(await customer.next())
        directory = stack.service.stores.wallets
        wallet, created = await directory.register_wallet("default", "cus_w", "polygon", NEWCOMER)
        assert created
        joined = await customer.next()
        assert [w.wallet_id for w in joined.wallets] == [wallet.wallet_id]
        known.apply(joined)
        assert total_of(joined) == known.total(Fraction(1, 2)) == "13.65"
        await directory.delete_wallet("default", "cus_w", "wal_w2")
        removal = await customer.next()
        assert [(w.wallet_id, w.removed) for w in removal.wallets] == [("wal_w2", True)]
        known.apply(removal)
        assert total_of(removal) == known.total(Fraction(1, 2)) == "8.65"
        customer.call.cancel()


async def test_a_price_that_cannot_be_read_carries_the_last_total_marked_stale(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        customer, known = Watch.start(watch_customer(stack, "cus_w")), Customer()
        first = await customer.next()
        known.apply(first)
        await asyncio.sleep(3 * POLL)
        # The feed's answer is two days old at the next blocks (max age: one day).
        latest = await rpc_call(url(stack), "eth_getBlockByNumber", ["latest", False])
        now = int(latest["timestamp"], 16)
        await set_feed_round(url(stack), pol_feed(stack), FEED_UNIT, now - 2 * 86400)
        await send_usdc(stack, holder(1), 2_000_000)
        stale = await customer.next()
        known.apply(stale)
        assert stale.total_stale and total_of(stale) == total_of(first) == "6.50"
        # The feed answers again: the next message is priced, and right.
        await set_feed_answer(url(stack), pol_feed(stack), FEED_UNIT)
        await send_usdc(stack, holder(1), 1_000_000)
        priced = await customer.next()
        known.apply(priced)
        assert not priced.HasField("total_stale")
        assert total_of(priced) == known.total(Fraction(1)) == "10.00"
        customer.call.cancel()


async def test_rest_customer_watch_lines_carry_the_total_joins_and_removals(
    start_anvil: AnvilFactory, tmp_path: Path
) -> None:
    async with watching_stack(start_anvil, tmp_path) as stack:
        await fund_newcomer(stack)
        gateway = await start_gateway(stack.target, "127.0.0.1:0", API_SERVICES, RestLimits())
        base = f"http://127.0.0.1:{gateway.port}"
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"{base}/v1/customers/cus_w/balances:watch",
                    headers={"X-API-Key": stack.api_key},
                ) as r,
            ):

                async def line() -> dict[str, Any]:
                    result: dict[str, Any] = json.loads(
                        await asyncio.wait_for(r.content.readline(), 5)
                    )["result"]
                    return result

                first = await line()
                assert first["initial"] and first["totalBalance"] == {
                    "amount": "6.50",
                    "currency": "USD",
                }
                wallet_id = await import_wallet(stack, NEWCOMER)
                joined = await line()
                assert [w["walletId"] for w in joined["wallets"]] == [wallet_id]
                assert "removed" not in joined["wallets"][0] and "totalStale" not in joined
                assert joined["totalBalance"]["amount"] == "13.65"
                await delete_wallet(stack, "wal_w2")
                removal = await line()
                (gone,) = removal["wallets"]
                assert (gone["walletId"], gone["removed"]) == ("wal_w2", True)
                assert removal["totalBalance"]["amount"] == "8.65"
        finally:
            await gateway.aclose()
