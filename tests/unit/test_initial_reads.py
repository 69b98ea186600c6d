"""Initial reads of new watch streams, batched (``InitialReads``) behind ``BalanceQueries``:
one fresh read for streams opening together, each stream given only its own addresses,
each tenant's cache filled as by a read of its own.  Fakes only; no timing is asserted."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from eth_utils.address import to_checksum_address

from service.balances import BalanceQueries
from service.cache import MemorySnapshotCache
from service.domain import PegPrice, Snapshot, Token, Wallet, WalletBalance
from service.errors import ChainUnavailable, CustomerNotFound, WalletNotFound
from service.watch.initial_reads import InitialReads

ASYNC = pytest.mark.asyncio(loop_scope="session")
USDC = Token("USDC", 6, to_checksum_address("0x" + "cd" * 20), PegPrice(Fraction(1)))
SHARED = to_checksum_address("0x" + "ab" * 20)  # every tenant holds a wallet at it


def address(n: int) -> str:
    return to_checksum_address(f"0x{n:040x}")


REGISTERED: dict[tuple[str, str], Wallet] = {}


def wallet(tenant: str, n: int, at: str | None = None) -> Wallet:
    """Wallet ``wal_{n}`` of ``tenant``, at ``at`` (else an address of its own), registered."""
    made = Wallet(
        f"wal_{n}",
        tenant,
        f"cus_{tenant}",
        "polygon",
        at or address(n),
        datetime(2024, 1, 1, tzinfo=UTC),
    )
    REGISTERED[(tenant, made.wallet_id)] = made
    return made


class Directory:
    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        if (tenant, wallet_id) not in REGISTERED:
            raise WalletNotFound(wallet_id)
        return REGISTERED[(tenant, wallet_id)]

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        raise CustomerNotFound(customer_id)


class Chain:
    """Each read is one block later; ``gate`` holds reads; ``down`` fails them."""

    def __init__(self) -> None:
        self.block = 100
        self.reads: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.down = False

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self.reads.append(list(addresses))
        self.block += 1
        block = self.block
        self.started.set()
        await self.gate.wait()
        if self.down:
            raise ChainUnavailable("polygon", "no provider answered")
        balances = {a: {"USDC": int(a, 16) % 1000} for a in addresses}
        return Snapshot("polygon", block, 1_700_000_000 + block, balances, {})


class World:
    def __init__(self, **batching: float) -> None:
        self.chain = Chain()
        self.cache = MemorySnapshotCache(3600)
        self.queries = BalanceQueries(
            Directory(),
            {"polygon": self.chain},
            {"polygon": (USDC,)},
            self.cache,
            base_currency="USD",
            minor_unit_digits=2,
            read_timeout=5,
            max_stale={"polygon": 60},
        )
        self.reads = InitialReads(
            {"polygon": self.chain},
            read_timeout=5,
            **batching,  # type: ignore[arg-type]
        )

    def first(self, w: Wallet) -> asyncio.Task[WalletBalance]:
        """A new stream's first read (``BalanceWatches`` makes it so)."""
        return asyncio.create_task(self.queries.balance_of(w.tenant, w, shared=self.reads.read))


@ASYNC
async def test_streams_of_three_tenants_share_one_fresh_read_and_get_only_their_own() -> None:
    world = World(quiet=0.001)
    mine = [wallet("tenant-a", 1), wallet("tenant-b", 2, SHARED), wallet("tenant-c", 3, SHARED)]
    firsts = await asyncio.gather(*(world.first(w) for w in mine))
    assert world.chain.reads == [sorted({address(1), SHARED})]  # one read for all three
    assert [f.wallet for f in firsts] == mine
    assert {f.block_number for f in firsts} == {101}
    # Each tenant's cache holds its own wallet's key, as if it had read it alone.
    for w in mine:
        again = await world.queries.wallet_balance(w.tenant, w.wallet_id)
        assert again.block_number == 101 and again.wallet == w
    assert len(world.chain.reads) == 1
    # A tenant that was not in the batch reads for itself: a fresh read, a newer block.
    outsider = await world.queries.balance_of("tenant-d", wallet("tenant-d", 4, SHARED))
    assert outsider.block_number == 102 and world.chain.reads[-1] == [SHARED]


@ASYNC
async def test_a_stream_arriving_during_a_read_waits_for_the_next_one_and_a_fresher_block() -> None:
    world = World(quiet=0.001)
    world.chain.gate.clear()
    early = world.first(wallet("tenant-a", 1))
    await world.chain.started.wait()  # the first batch is being read
    late = [world.first(wallet("tenant-a", 2)), world.first(wallet("tenant-b", 3))]
    await asyncio.sleep(0.02)
    assert len(world.chain.reads) == 1  # the next batch waits for the read under way
    world.chain.gate.set()
    first = await early
    seconds = await asyncio.gather(*late)
    assert first.block_number == 101
    assert [s.block_number for s in seconds] == [102, 102]
    assert world.chain.reads == [[address(1)], [address(2), address(3)]]


@ASYNC
async def test_a_cached_stream_is_answered_from_its_tenants_cache_without_a_batch() -> None:
    world = World(quiet=0.001)
    w = wallet("tenant-a", 1)
    await world.queries.wallet_balance("tenant-a", w.wallet_id)  # cached for tenant-a
    assert await world.first(w) is not None
    assert len(world.chain.reads) == 1 and world.reads.reads == 0
    # Another tenant's cache is no help to tenant-b: its stream is batched and read.
    await world.first(wallet("tenant-b", 1))
    assert len(world.chain.reads) == 2 and world.reads.reads == 1


@ASYNC
async def test_a_failed_batch_gives_each_stream_its_own_last_good_read_or_the_error() -> None:
    world = World(quiet=0.001)
    a, b = wallet("tenant-a", 1, SHARED), wallet("tenant-b", 2, SHARED)
    await world.queries.wallet_balance("tenant-a", a.wallet_id)  # a's last good read, block 101
    await world.cache.aclose()  # its TTL runs out
    world.chain.down = True
    stale, failed = await asyncio.gather(world.first(a), world.first(b), return_exceptions=True)
    assert world.reads.reads == 1
    assert stale.stale and stale.block_number == 101
    assert isinstance(failed, ChainUnavailable)  # b never had a read: nothing of a's for b


@ASYNC
async def test_a_stream_going_away_does_not_cancel_the_read_of_the_others() -> None:
    world = World(quiet=0.001)
    world.chain.gate.clear()
    leaving, staying = world.first(wallet("tenant-a", 1)), world.first(wallet("tenant-b", 2))
    await world.chain.started.wait()
    leaving.cancel()
    world.chain.gate.set()
    assert (await staying).block_number == 101
    with pytest.raises(asyncio.CancelledError):
        await leaving


@ASYNC
async def test_a_storm_waits_for_max_wait_and_a_full_batch_is_read_at_once() -> None:
    # crowd=4: four streams within max_wait make a storm; max_wait is long, so only
    # max_addresses can end the batch here.
    world = World(quiet=0.001, max_wait=60, crowd=4, max_addresses=10)
    streams = [world.first(wallet("tenant-a", n)) for n in range(9)]
    await asyncio.sleep(0.05)
    assert world.chain.reads == []  # a storm: not read at the first quiet pause
    streams.append(world.first(wallet("tenant-b", 9)))  # the tenth address fills the batch
    firsts = await asyncio.gather(*streams)
    assert world.chain.reads == [sorted(address(n) for n in range(10))]
    assert {f.block_number for f in firsts} == {101}


@ASYNC
async def test_closing_fails_open_batches_and_later_reads() -> None:
    world = World(quiet=60)
    waiting = world.first(wallet("tenant-a", 1))
    await asyncio.sleep(0.01)
    await world.reads.aclose()
    with pytest.raises(ChainUnavailable, match="shutting down"):
        await waiting
    with pytest.raises(ChainUnavailable, match="shutting down"):
        await world.reads.read("polygon", [address(2)], False)
    with pytest.raises(ChainUnavailable, match="not configured"):
        await InitialReads({}, read_timeout=1).read("base", [address(2)], False)
    assert world.chain.reads == []
