"""Reorg corrections without a node: the follower over a forking fake chain, the hub's
mailboxes given corrections, and what a receiver applying events in order ends with."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from service.cluster.bus import decode_message, encode_message
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
from service.errors import WalletNotFound
from service.ports import FollowerStateStore
from service.store.sqlite import open_sqlite_stores
from service.watch.follower import REORG_DEPTH, BlockFollower
from service.watch.hub import WatchHub
from service.webhooks.payload import balance_updated_body, event_id

aio = pytest.mark.asyncio(loop_scope="session")

ADDR = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
TOKEN = "0x9876543210987654321098765432109876543210"
TOKENS = (Token("USDC", 6, TOKEN, PegPrice(Fraction(1))),)
LATEST = ReadDepth(confirmations=0, block_tag="latest")
WALLET = Wallet("wal_1", "default", "cus_1", "polygon", ADDR, datetime(2024, 1, 1, tzinfo=UTC))


class ForkingChain:
    """A chain of blocks, each with ADDR's USDC amount; ``reorg`` replaces the blocks from
    a height on (new hashes: the branch is part of each hash)."""

    def __init__(self, amount: int) -> None:
        self.blocks: list[tuple[str, int]] = [("0x" + "00" * 32, amount)]  # block 0
        self.branch = 0
        self.headers_asked: list[int] = []

    def _hash(self, number: int) -> str:
        return f"0x{self.branch:032x}{number:032x}"

    def mine(self, amount: int | None = None) -> int:
        """A new block holding ``amount`` (None: unchanged); its number."""
        number = len(self.blocks)
        self.blocks.append((self._hash(number), self.blocks[-1][1] if amount is None else amount))
        return number

    def reorg(self, from_number: int, *amounts: int | None) -> None:
        """Blocks from ``from_number`` on replaced by one new block per amount."""
        self.branch += 1
        del self.blocks[from_number:]
        for amount in amounts:
            self.mine(amount)

    def ref(self, number: int) -> BlockRef:
        return BlockRef("polygon", number, self.blocks[number][0], 1000 + number)

    async def head_number(self) -> int:
        return len(self.blocks) - 1

    async def block_header(self, tag_or_number: str | int) -> BlockHeader:
        number = len(self.blocks) - 1 if isinstance(tag_or_number, str) else tag_or_number
        if not isinstance(tag_or_number, str):
            self.headers_asked.append(number)
        if number >= len(self.blocks):
            raise AssertionError(f"block {number} does not exist")
        parent = self.blocks[number - 1][0] if number else "0x" + "00" * 32
        return BlockHeader(number, self.blocks[number][0], parent, 1000 + number)

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        assert block_number is not None
        amount = self.blocks[block_number][1]
        return Snapshot(
            "polygon",
            block_number,
            1000 + block_number,
            {a: {"USDC": amount} for a in addresses},
            {},
        )


class Receiver:
    """A listener that applies each change in order, as a webhook receiver would, and can
    fail (the process dying after it heard of a block, before the block was saved)."""

    def __init__(self) -> None:
        self.balance: int | None = None
        self.heard: list[tuple[int, int, int, int]] = []  # (block, previous, current, reorg)
        self.fail_after_hearing = False

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        for c in changes:
            self.heard.append((block.number, c.previous, c.current, c.reorg))
            self.balance = c.current
        if self.fail_after_hearing:
            raise RuntimeError("the process died")

    async def watched_addresses(self, network: str) -> set[str]:
        return {ADDR}


def following(
    chain: ForkingChain, store: FollowerStateStore | None = None
) -> tuple[BlockFollower, Receiver]:
    follower = BlockFollower(
        "polygon",
        chain,
        depth=LATEST,
        tokens=TOKENS,
        poll_interval=0.01,
        read_timeout=1,
        state_store=store,
    )
    receiver = Receiver()
    follower.add_listener(receiver)
    follower.add_source(receiver)
    return follower, receiver


@aio
async def test_a_dropped_change_is_corrected_at_the_replacing_block() -> None:
    chain = ForkingChain(5)
    follower, receiver = following(chain)
    await follower.tick()  # baseline at block 0
    chain.mine(6)
    assert await follower.tick() == chain.ref(1)
    assert receiver.heard == [(1, 5, 6, 0)]
    chain.reorg(1, None)  # block 1 replaced at the same height, without the change
    assert await follower.tick() == chain.ref(1)
    assert receiver.heard[-1] == (1, 6, 5, 1)  # the announced 6 replaced by the canonical 5
    assert receiver.balance == 5 and follower.corrections_found == 1
    chain.mine(8)  # an ordinary change afterwards is not a correction
    await follower.tick()
    assert receiver.heard[-1] == (2, 5, 8, 0)


@aio
async def test_a_deeper_reorg_seen_through_a_parent_hash_corrects_only_replaced_pairs() -> None:
    chain = ForkingChain(5)
    follower, receiver = following(chain)
    await follower.tick()
    chain.mine(6)
    await follower.tick()
    chain.mine(7)
    await follower.tick()
    chain.mine()  # block 3: nothing changes
    await follower.tick()
    # Blocks 2 and 3 replaced; the new branch is longer: block 4's parent is not our 3.
    chain.reorg(2, 9, None, None)
    assert await follower.tick() == chain.ref(4)
    assert receiver.heard[-1] == (4, 7, 9, 1)  # replaces the 7 announced at block 2
    assert receiver.balance == 9
    # Block 1's announcement was still canonical: the walk stopped there.
    assert chain.headers_asked.count(1) == 1 and 2 in chain.headers_asked


@aio
async def test_a_replaced_change_equal_to_the_canonical_one_needs_no_correction() -> None:
    chain = ForkingChain(5)
    follower, receiver = following(chain)
    await follower.tick()
    chain.mine(6)
    await follower.tick()
    chain.reorg(1, 6)  # the same transfer, re-included in the replacing block
    await follower.tick()
    assert receiver.heard == [(1, 5, 6, 0)]


@aio
async def test_a_chain_flipping_back_gives_distinct_corrections_and_ids() -> None:
    chain = ForkingChain(5)
    follower, receiver = following(chain)
    await follower.tick()
    chain.mine(6)
    await follower.tick()
    first_branch = chain.blocks[1]
    chain.reorg(1, 5)
    await follower.tick()
    chain.branch -= 2  # back to the first branch: block 1 is the original again
    chain.reorg(1, 6)
    assert chain.blocks[1] == first_branch
    await follower.tick()
    chain.reorg(1, 5)
    await follower.tick()
    assert [h[1:] for h in receiver.heard] == [(5, 6, 0), (6, 5, 1), (5, 6, 2), (6, 5, 3)]
    assert receiver.balance == 5
    # Two corrections with the same block, amounts and wallet are still two ids.
    ref = chain.ref(1)
    twice = [
        event_id("acme", "wal_1", ref, BalanceChange("polygon", ADDR, "USDC", 6, 6, 5, n))
        for n in (1, 3)
    ]
    plain = event_id("acme", "wal_1", ref, BalanceChange("polygon", ADDR, "USDC", 6, 6, 5))
    assert len({*twice, plain}) == 3


@aio
async def test_announcements_older_than_the_depth_are_forgotten() -> None:
    chain = ForkingChain(5)
    follower, receiver = following(chain)
    await follower.tick()
    chain.mine(6)
    await follower.tick()
    for _ in range(REORG_DEPTH):
        chain.mine()
        await follower.tick()
    chain.reorg(1, *[None] * (REORG_DEPTH + 1), None)  # replaces block 1 and every later one
    await follower.tick()
    # Still converges (compared with the last announced state), but is not marked.
    assert receiver.heard[-1][1:] == (6, 5, 0) and receiver.balance == 5


@aio
async def test_the_announcements_survive_a_restart(tmp_path: Path) -> None:
    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    try:
        chain = ForkingChain(5)
        first, _ = following(chain, stores.follower_state)
        await first.tick()
        chain.mine(6)
        await first.tick()
        saved = await stores.follower_state.load_follower_state("polygon")
        assert saved is not None and [b.number for b in saved.announced] == [1]
        assert saved.announced[0].keys == {(ADDR, "USDC")}
        chain.reorg(1, 5)  # while no process follows
        second, receiver = following(chain, stores.follower_state)
        await second.tick()
        assert receiver.heard == [(1, 6, 5, 1)]
        saved = await stores.follower_state.load_follower_state("polygon")
        assert saved is not None and saved.reorgs == 1
        # The correction is an announcement too: the replaced block's is forgotten.
        assert [(b.number, b.hash) for b in saved.announced] == [(1, chain.ref(1).hash)]
    finally:
        await stores.aclose()


@aio
async def test_an_in_flight_block_replaced_before_the_restart_is_corrected(
    tmp_path: Path,
) -> None:
    """The process died after announcing block 1 and before saving it; then block 1 was
    replaced.  The restarted follower cannot read block 1 again: it corrects it."""
    stores = await open_sqlite_stores(tmp_path / "state.sqlite3")
    try:
        chain = ForkingChain(5)
        first, dying = following(chain, stores.follower_state)
        await first.tick()
        chain.mine(6)
        dying.fail_after_hearing = True
        assert await first.tick() is None  # heard, not saved
        assert dying.heard == [(1, 5, 6, 0)]
        chain.reorg(1, 7)  # replaced by a different transfer
        second, receiver = following(chain, stores.follower_state)
        await second.tick()
        assert receiver.heard == [(1, 6, 7, 1)]  # from what was announced, to the chain's
        # Not replaced: the same block is read again, the same change (no correction).
        chain2 = ForkingChain(5)
        stores2 = await open_sqlite_stores(tmp_path / "other.sqlite3")
        try:
            third, dying = following(chain2, stores2.follower_state)
            await third.tick()
            chain2.mine(6)
            dying.fail_after_hearing = True
            await third.tick()
            fourth, receiver = following(chain2, stores2.follower_state)
            await fourth.tick()
            assert receiver.heard == [(1, 5, 6, 0)]
        finally:
            await stores2.aclose()
    finally:
        await stores.aclose()


# --- the hub ------------------------------------------------------------------------------


def describe(wallet: Wallet, snapshot: Snapshot) -> WalletBalance:
    held = snapshot.balances[wallet.address]
    return WalletBalance(wallet, (TokenAmount("USDC", held["USDC"], 6),), snapshot.block_number, 1)


async def never_found(tenant: str, wallet_id: str) -> Wallet:
    raise WalletNotFound(wallet_id)


def at(number: int, amount: int, branch: int = 0) -> tuple[BlockRef, Snapshot]:
    ref = BlockRef("polygon", number, f"0x{branch:032x}{number:032x}", 1000 + number)
    return ref, Snapshot("polygon", number, 1000 + number, {ADDR: {"USDC": amount}}, {})


async def offer(hub: WatchHub, number: int, previous: int, amount: int, reorg: int = 0) -> None:
    ref, snapshot = at(number, amount, branch=reorg)
    change = BalanceChange("polygon", ADDR, "USDC", 6, previous, amount, reorg)
    await hub.balances_changed(ref, [change], snapshot)


@aio
async def test_a_stream_gets_a_correction_at_the_same_height_and_ends_canonical() -> None:
    hub = WatchHub(describe, never_found)
    subscription = hub.subscribe("default", [WALLET])
    subscription.start_from([describe(WALLET, at(0, 5)[1])])
    held = 5
    await offer(hub, 1, 5, 6)
    message = await subscription.next()
    assert message is not None and not message.wallets[0].reorged
    await offer(hub, 1, 6, 5, reorg=1)  # same height: a reorg, not an old state
    message = await subscription.next()
    assert message is not None
    (update,) = message.wallets
    assert update.reorged and [(c.previous, c.current) for c in update.changes] == [(6, 5)]
    for c in update.changes:  # what a subscriber applying messages in order does
        held = c.current
    assert held == 5 == update.balance.amounts[0].raw
    # An ordinary change at a block that replaced the height is news too.
    await offer(hub, 1, 5, 4)
    message = await subscription.next()
    assert message is not None and message.wallets[0].balance.amounts[0].raw == 4


@aio
async def test_a_correction_of_a_state_not_taken_yet_voids_it() -> None:
    hub = WatchHub(describe, never_found)
    subscription = hub.subscribe("default", [WALLET])
    subscription.start_from([describe(WALLET, at(0, 5)[1])])
    await offer(hub, 2, 5, 6)  # pending, not taken
    await offer(hub, 2, 6, 5, reorg=1)  # corrected back to what the consumer holds
    hub.close()
    assert await subscription.next() is None  # nothing was sent: the consumer was right
    # A correction to a value the consumer does not hold goes out whatever its block.
    hub = WatchHub(describe, never_found)
    subscription = hub.subscribe("default", [WALLET])
    subscription.start_from([describe(WALLET, at(5, 6)[1])])
    await offer(hub, 3, 6, 7, reorg=1)  # below the block the consumer was sent
    message = await subscription.next()
    assert message is not None and message.coalesced_updates == 0
    assert message.wallets[0].reorged and message.wallets[0].balance.amounts[0].raw == 7


def test_the_bus_carries_corrections_and_reads_messages_without_them() -> None:
    ref, snapshot = at(3, 7)
    changes = [
        BalanceChange("polygon", ADDR, "USDC", 6, 6, 7, 2),
        BalanceChange("polygon", ADDR, "POL", 18, 1, 2),
    ]
    _, _, decoded, _ = decode_message(encode_message(ref, snapshot, changes=changes))
    assert decoded == changes
    plain = encode_message(ref, snapshot, changes=changes[1:])
    assert b"reorg" not in plain  # what a replica of the previous version reads
    with pytest.raises(ValueError):
        decode_message(plain.replace(b'"changes"', b'"reorgs":[[5,1]],"changes"'))


def test_a_correction_says_reorged_and_an_ordinary_event_does_not() -> None:
    ref = BlockRef("polygon", 3, "0x" + "ab" * 32, 1_705_314_600)
    moment = datetime(2024, 1, 15, tzinfo=UTC)
    corrected = balance_updated_body(
        wallet_id="wal_1",
        customer_id="cus_1",
        block=ref,
        change=BalanceChange("polygon", ADDR, "USDC", 6, 6_000_000, 5_000_000, 1),
        created_at=moment,
    )
    assert '"previous_balance":"6.00"' in corrected and corrected.endswith(
        '"reorged":true},"createdAt":1705276800000}'
    )
    ordinary = balance_updated_body(
        wallet_id="wal_1",
        customer_id="cus_1",
        block=ref,
        change=BalanceChange("polygon", ADDR, "USDC", 6, 6_000_000, 5_000_000),
        created_at=moment,
    )
    assert "reorged" not in ordinary
