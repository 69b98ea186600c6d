"""The watch hub and the follower without a chain: mailboxes, coalescing, deletions, gaps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from service.domain import (
    BalanceChange,
    BlockHeader,
    BlockRef,
    PegPrice,
    ReadDepth,
    Snapshot,
    Token,
    TokenAmount,
    Wallet,
    WalletBalance,
)
from service.errors import ChainUnavailable, CustomerNotFound, WalletNotFound
from service.watch.follower import BlockFollower
from service.watch.hub import WatchHub

aio = pytest.mark.asyncio(loop_scope="session")

ADDR = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0x9876543210987654321098765432109876543210"
TOKENS = (Token("USDC", 6, ADDR_2, PegPrice(1)),)
DEPTH = ReadDepth(confirmations=0, block_tag="latest")
WALLET = Wallet("wal_1", "default", "cus_1", "polygon", ADDR, datetime(2024, 1, 1, tzinfo=UTC))
WALLET_2 = Wallet("wal_2", "default", "cus_1", "polygon", ADDR_2, datetime(2024, 1, 1, tzinfo=UTC))


def describe(wallet: Wallet, snapshot: Snapshot) -> WalletBalance:
    held = snapshot.balances[wallet.address]
    return WalletBalance(
        wallet, (TokenAmount("USDC", held["USDC"], 6),), snapshot.block_number, 100
    )


def snap(number: int, **amounts: int) -> Snapshot:
    by_address = {ADDR: amounts.get("a", 0), ADDR_2: amounts.get("b", 0)}
    return Snapshot(
        "polygon", number, 100 + number, {a: {"USDC": v} for a, v in by_address.items()}, {}
    )


def block(number: int) -> BlockRef:
    return BlockRef("polygon", number, f"0x{number:064x}", 100 + number)


async def change(hub: WatchHub, number: int, previous: int, current: int) -> None:
    await hub.balances_changed(
        block(number),
        [BalanceChange("polygon", ADDR, "USDC", 6, previous, current)],
        snap(number, a=current),
    )


async def never_found(tenant: str, wallet_id: str) -> Wallet:
    raise WalletNotFound(wallet_id)


@aio
async def test_slow_consumer_gets_latest_state_with_a_count_fast_one_gets_every_update() -> None:
    hub = WatchHub(describe, never_found)
    fast = hub.subscribe("default", [WALLET])
    slow = hub.subscribe("default", [WALLET])
    for sub in (fast, slow):
        sub.start_from([describe(WALLET, snap(10, a=1))])
    seen = []
    for n in range(11, 111):  # 100 changes, the slow consumer takes none
        await change(hub, n, n - 10, n - 9)
        update = await fast.next()
        assert update is not None and update.coalesced_updates == 0
        seen.append(update.wallets[0].changes[0].current)
        assert len(slow._pending) == 1  # O(1): only the latest state is held
    assert seen == list(range(2, 102))
    update = await slow.next()
    assert update is not None
    assert update.coalesced_updates == 99
    (wallet,) = update.wallets
    assert wallet.balance.block_number == 110
    assert [(c.previous, c.current) for c in wallet.changes] == [(1, 101)]  # vs what it was sent


@aio
async def test_stale_equal_and_duplicate_states_are_not_sent() -> None:
    hub = WatchHub(describe, never_found)
    sub = hub.subscribe("default", [WALLET])
    await change(hub, 5, 0, 7)  # arrives before the initial state was read
    sub.start_from([describe(WALLET, snap(6, a=7))])  # the initial read already has it
    assert sub._pending == {}
    await hub.balances_baselined(block(7), [ADDR], snap(7, a=7))  # same amount: nothing
    await change(hub, 8, 7, 9)
    await change(hub, 8, 7, 9)  # a retried block: the same state again
    update = await sub.next()
    assert update is not None and update.coalesced_updates == 0
    assert [(c.previous, c.current) for c in update.wallets[0].changes] == [(7, 9)]
    assert update.wallets[0].block_hash == block(8).hash


@aio
async def test_close_ends_streams_normally_and_deletion_with_not_found() -> None:
    hub = WatchHub(describe, never_found)
    wallet_watch = hub.subscribe("default", [WALLET])
    customer_watch = hub.subscribe("default", [WALLET, WALLET_2], customer_id="cus_1")
    assert await hub.watched_addresses("polygon") == set()  # followed once it has its state
    wallet_watch.start_from([])
    customer_watch.start_from([])
    assert await hub.watched_addresses("polygon") == {ADDR, ADDR_2}
    await hub.address_released("polygon", ADDR)  # the directory says: gone
    with pytest.raises(WalletNotFound):
        await wallet_watch.next()
    assert set(customer_watch.wallets) == {"wal_2"}  # shrinks, still open
    assert await hub.watched_addresses("polygon") == {ADDR_2}
    await hub.wallet_deleted(WALLET_2)
    with pytest.raises(CustomerNotFound):
        await customer_watch.next()
    assert hub.subscriber_count() == 0
    other = hub.subscribe("default", [WALLET])
    waiting = asyncio.create_task(other.next())
    await asyncio.sleep(0)
    hub.close()
    assert await waiting is None
    assert await hub.subscribe("default", [WALLET]).next() is None  # after close: ends at once


class FakeChain:
    """Blocks by number with balances; ``down`` makes every call fail."""

    def __init__(self) -> None:
        self.head = 1
        self.amounts: dict[int, int] = {1: 5}
        self.down = False
        self.reads: list[int] = []
        self.parent_override: dict[int, str] = {}

    def amount_at(self, number: int) -> int:
        return self.amounts[max(n for n in self.amounts if n <= number)]

    async def head_number(self) -> int:
        self._check()
        return self.head

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        self._check()
        number = self.head if isinstance(tag_or_number, str) else tag_or_number
        parent = self.parent_override.get(number, f"0x{number - 1:064x}")
        return BlockHeader(number, f"0x{number:064x}", parent, 100 + number)

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self._check()
        assert block_number is not None and not with_prices
        self.reads.append(block_number)
        return Snapshot(
            "polygon",
            block_number,
            100 + block_number,
            {a: {"USDC": self.amount_at(block_number)} for a in addresses},
            {},
        )

    def _check(self) -> None:
        if self.down:
            raise ChainUnavailable("polygon", "node refused eth_call (JSON-RPC error -1)")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, list[tuple[int, int]]]] = []
        self.fail = False

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        if self.fail:
            raise RuntimeError("store down")
        self.calls.append((block.number, [(c.previous, c.current) for c in changes]))

    async def watched_addresses(self, network: str) -> set[str]:
        return {ADDR}


@aio
async def test_follower_baseline_gap_failure_reorg_and_listener_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="service.watch")
    chain = FakeChain()
    follower = BlockFollower(
        "polygon", chain, depth=DEPTH, tokens=TOKENS, poll_interval=0.01, read_timeout=1
    )
    recorder = Recorder()
    follower.add_listener(recorder)
    follower.add_source(recorder)
    assert (await follower.tick()) == block(1)  # baseline: nothing emitted
    assert await follower.tick() is None  # no new block: no read
    assert chain.reads == [1]
    chain.head, chain.amounts[2] = 2, 6
    await follower.tick()
    assert recorder.calls == [(2, [(5, 6)])]
    # The node goes down; two changes happen; it comes back: one net change, the gap logged.
    chain.down = True
    assert await follower.tick() is None
    chain.amounts[3], chain.amounts[4], chain.head = 7, 8, 5
    chain.down = False
    await follower.tick()
    assert recorder.calls[-1] == (5, [(6, 8)])
    assert "blocks 3-4 not read one by one" in caplog.text
    assert "follower read failed" in caplog.text and "http" not in caplog.text
    # A listener failure: the block is retried (same state re-offered) until accepted.
    chain.head, chain.amounts[6] = 6, 9
    recorder.fail = True
    assert await follower.tick() is None
    recorder.fail = False
    assert (await follower.tick()) == block(6)
    assert recorder.calls[-1] == (6, [(8, 9)])
    # A reorg: block 7's parent is not the block 6 we read.
    chain.head, chain.amounts[7] = 7, 10
    chain.parent_override[7] = "0x" + "ab" * 32
    await follower.tick()
    assert "reorg below block 7" in caplog.text
    assert recorder.calls[-1] == (7, [(9, 10)])


@aio
async def test_follower_task_survives_errors_and_stops() -> None:
    chain = FakeChain()
    chain.down = True
    follower = BlockFollower(
        "polygon", chain, depth=DEPTH, tokens=TOKENS, poll_interval=0.01, read_timeout=1
    )
    follower.add_source(Recorder())
    follower.start()
    await asyncio.sleep(0.05)
    chain.down = False
    for _ in range(100):
        if follower.last_block is not None:
            break
        await asyncio.sleep(0.01)
    assert follower.last_block == block(1)
    await follower.aclose()


@aio
async def test_a_restarted_follower_emits_the_net_change_of_its_downtime(tmp_path: Any) -> None:
    """The last read is saved in the real SQLite store and taken up by a new follower."""
    from service.store.sqlite import open_sqlite_stores

    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    store = stores.follower_state
    try:
        chain = FakeChain()
        first = BlockFollower(
            "polygon",
            chain,
            depth=DEPTH,
            tokens=TOKENS,
            poll_interval=0.01,
            read_timeout=1,
            state_store=store,
        )
        first.add_source(Recorder())
        assert await first.tick() == block(1)  # baseline, saved
        # The service is down while the balance moves twice and blocks go by.
        chain.amounts[2], chain.amounts[3], chain.head = 6, 9, 4
        second = BlockFollower(
            "polygon",
            chain,
            depth=DEPTH,
            tokens=TOKENS,
            poll_interval=0.01,
            read_timeout=1,
            state_store=store,
        )
        recorder = Recorder()
        second.add_listener(recorder)
        second.add_source(recorder)
        assert await second.tick() == block(4)
        assert recorder.calls == [(4, [(5, 9)])]  # one net change, relative to the saved read
        saved = await store.load_follower_state("polygon")
        assert saved is not None and saved.block == block(4)
        assert saved.balances == {ADDR: {"USDC": 9}}

        # A chain behind the saved block (a different chain) is not followed blindly.
        fresh_chain = FakeChain()
        third = BlockFollower(
            "polygon",
            fresh_chain,
            depth=DEPTH,
            tokens=TOKENS,
            poll_interval=0.01,
            read_timeout=1,
            state_store=store,
        )
        third.add_listener(recorder)
        third.add_source(recorder)
        assert await third.tick() == block(1)  # a new baseline, no change emitted
        assert recorder.calls == [(4, [(5, 9)])]
    finally:
        await stores.aclose()


@aio
async def test_follower_state_keeps_uint256_amounts_exact(tmp_path: Any) -> None:
    from service.domain import FollowerState
    from service.store.sqlite import open_sqlite_stores

    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    store = stores.follower_state
    try:
        state = FollowerState(block(7), {ADDR: {"USDC": 2**256 - 1, "ETH": 0}})
        await store.save_follower_state(state)
        assert await store.load_follower_state("polygon") == state
        assert await store.load_follower_state("ethereum") is None
    finally:
        await stores.aclose()


@aio
async def test_follower_aclose_is_not_swallowed_when_a_wake_arrives_with_it() -> None:
    """Bug 5: a cancel landing as the wake event is set must still stop the loop.

    ``wake()`` then ``aclose()`` in one step: the event's waiter finishes first,
    then the cancellation arrives.  ``asyncio.wait_for`` on 3.11 returns the
    finished wait and drops the cancellation, so the loop ran on and ``aclose``
    waited forever.
    """
    follower = BlockFollower(
        "polygon", FakeChain(), depth=DEPTH, tokens=TOKENS, poll_interval=60, read_timeout=1
    )
    follower.start()
    await asyncio.sleep(0.05)  # the first tick is done: the loop sleeps until woken
    loops = {t for t in asyncio.all_tasks() if t.get_name() == "follower-polygon"}
    follower.wake()
    closing = asyncio.create_task(follower.aclose())  # cancels the loop as the wake lands
    done, _ = await asyncio.wait({closing}, timeout=2)
    for task in (*loops, closing):  # do not leak a hung loop into later tests
        task.cancel()
    assert closing in done, "aclose hung: the loop swallowed its cancellation"
    assert all(task.done() for task in loops)
