"""The per-block fan-out does shared work once: each wallet described once per block, one
update object (and one protobuf message) for the streams sent the same thing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from service.api.balances_servicer import BalancesServicer
from service.api.convert import wallet_watch_response
from service.domain import BlockRef, Snapshot, TokenAmount, Wallet, WalletBalance
from service.errors import WalletNotFound
from service.watch.hub import WatchHub

aio = pytest.mark.asyncio(loop_scope="session")

ADDR = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
CREATED = datetime(2024, 1, 1, tzinfo=UTC)
WALLET = Wallet("wal_1", "default", "cus_1", "polygon", ADDR, CREATED)
WALLET_2 = Wallet("wal_2", "default", "cus_1", "polygon", ADDR_2, CREATED)
OTHER_TENANTS = Wallet("wal_9", "tenant-b", "cus_9", "polygon", ADDR, CREATED)


class Describe:
    """Counts how often the hub asks for a wallet's balance."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, wallet: Wallet, snapshot: Snapshot) -> WalletBalance:
        self.calls.append(wallet.wallet_id)
        held = snapshot.balances[wallet.address]
        amounts = (TokenAmount("USDC", held["USDC"], 6), TokenAmount("POL", held["POL"], 18))
        return WalletBalance(wallet, amounts, snapshot.block_number, 1000 + snapshot.block_number)


def snap(number: int, usdc: int, pol: int = 0) -> Snapshot:
    held = {"USDC": usdc, "POL": pol}
    return Snapshot("polygon", number, 1000 + number, {ADDR: held, ADDR_2: dict(held)}, {})


def block(number: int) -> BlockRef:
    return BlockRef("polygon", number, f"0x{number:064x}", 1000 + number)


async def never_found(tenant: str, wallet_id: str) -> Wallet:
    raise WalletNotFound(wallet_id)


@aio
async def test_each_wallet_is_described_once_per_block_whatever_its_number_of_streams() -> None:
    describe = Describe()
    hub = WatchHub(describe, never_found)
    streams = [hub.subscribe("default", [WALLET]) for _ in range(3)]
    customer = hub.subscribe("default", [WALLET, WALLET_2], customer_id="cus_1")
    other = hub.subscribe("tenant-b", [OTHER_TENANTS])
    first = describe(WALLET, snap(10, 1))
    for s in [*streams, customer]:
        s.start_from([first, describe(WALLET_2, snap(10, 1))])
    other.start_from([describe(OTHER_TENANTS, snap(10, 1))])
    describe.calls.clear()

    await hub.balances_baselined(block(11), [ADDR, ADDR_2], snap(11, 5, 7))
    assert sorted(describe.calls) == ["wal_1", "wal_2", "wal_9"]  # not once per stream

    updates = [await s.next() for s in streams]
    shared = {id(u.wallets[0]) for u in updates if u is not None}
    assert len(shared) == 1  # one WalletUpdate object for the three streams
    (update,) = {u.wallets[0] for u in updates if u is not None}
    assert [(c.currency, c.previous, c.current) for c in update.changes] == [
        ("USDC", 1, 5),
        ("POL", 0, 7),
    ]
    customer_update = await customer.next()
    assert customer_update is not None
    assert {w.balance.wallet.wallet_id for w in customer_update.wallets} == {"wal_1", "wal_2"}
    assert customer_update.wallets[0] is update or customer_update.wallets[1] is update
    other_update = await other.next()
    assert other_update is not None and other_update.wallets[0].balance.wallet == OTHER_TENANTS


@aio
async def test_a_stream_sent_something_else_gets_an_update_of_its_own() -> None:
    hub = WatchHub(Describe(), never_found)
    fast, slow = hub.subscribe("default", [WALLET]), hub.subscribe("default", [WALLET])
    start = Describe()(WALLET, snap(10, 1))
    fast.start_from([start])
    slow.start_from([start])
    await hub.balances_baselined(block(11), [ADDR], snap(11, 2))
    assert await fast.next() is not None  # the slow one takes nothing yet
    await hub.balances_baselined(block(12), [ADDR], snap(12, 3))
    fast_update, slow_update = await fast.next(), await slow.next()
    assert fast_update is not None and slow_update is not None
    assert fast_update.wallets[0] is not slow_update.wallets[0]
    assert [(c.previous, c.current) for c in fast_update.wallets[0].changes] == [(2, 3)]
    assert [(c.previous, c.current) for c in slow_update.wallets[0].changes] == [(1, 3)]
    assert slow_update.coalesced_updates == 1


@aio
async def test_the_servicer_builds_one_message_for_streams_sent_the_same_update() -> None:
    hub = WatchHub(Describe(), never_found)
    streams = [hub.subscribe("default", [WALLET]) for _ in range(3)]
    start = Describe()(WALLET, snap(10, 1))
    for s in streams:
        s.start_from([start])
    await hub.balances_baselined(block(11), [ADDR], snap(11, 2))
    servicer = BalancesServicer(queries=None, minor_unit_digits=2)  # type: ignore[arg-type]
    updates = [await s.next() for s in streams]
    messages = [servicer._wallet_message(u) for u in updates if u is not None]
    assert messages[0] is messages[1] is messages[2]
    assert messages[0] == wallet_watch_response(updates[0])  # type: ignore[arg-type]
    assert messages[0].changes[0].previous_amount == "0.000001"
    assert messages[0].block_hash == block(11).hash
    # The same update with another coalesced count is another message.
    await hub.balances_baselined(block(12), [ADDR], snap(12, 3))
    await hub.balances_baselined(block(13), [ADDR], snap(13, 4))
    later = [await s.next() for s in streams]
    assert all(u is not None and u.coalesced_updates == 1 for u in later)
    assert servicer._wallet_message(later[0]) is servicer._wallet_message(later[1])  # type: ignore[arg-type]


@aio
async def test_a_change_newer_than_the_initial_state_that_came_before_it_is_still_sent() -> None:
    # The stream subscribes, then reads its initial state (from its tenant's cache, say, at
    # block 10); the follower's block 12 arrived in between.  It must not be dropped.
    describe = Describe()
    hub = WatchHub(describe, never_found)
    stream = hub.subscribe("default", [WALLET])
    await hub.balances_baselined(block(12), [ADDR], snap(12, 5))
    stream.start_from([describe(WALLET, snap(10, 1))])
    update = await asyncio.wait_for(stream.next(), 5)  # (it used to be dropped: no message)
    assert update is not None and update.wallets[0].balance.block_number == 12
    assert [(c.previous, c.current) for c in update.wallets[0].changes] == [(1, 5)]
    # And an older or equal one is dropped, as before.
    late = hub.subscribe("default", [WALLET])
    await hub.balances_baselined(block(12), [ADDR], snap(12, 5))
    late.start_from([describe(WALLET, snap(12, 5))])
    assert late._pending == {}
