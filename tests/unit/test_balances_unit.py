"""Unit tests with fakes: BalanceQueries' deadline budget, coalescing and caching; the
Multicall3 codec the chain reader is built on."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from eth_abi.abi import decode, encode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from service.balances import BalanceQueries
from service.cache import MemorySnapshotCache
from service.chain import multicall
from service.chain.multicall import Call, CallResult, decode_aggregate3, encode_aggregate3
from service.domain import BalanceChange, BlockRef, PegPrice, Snapshot, Token, Wallet
from service.errors import ChainUnavailable, CustomerNotFound, WalletNotFound
from service.watch.cache_refresh import CacheRefresh

ASYNC = pytest.mark.asyncio(loop_scope="session")
READ_TIMEOUT = 7.0
ADDRESS = to_checksum_address("0x" + "ab" * 20)
USDC = Token("USDC", 6, to_checksum_address("0x" + "cd" * 20), PegPrice(Fraction(1)))
WALLET = Wallet(
    "wal_one", "default", "cus_one", "polygon", ADDRESS, datetime(2024, 1, 1, tzinfo=UTC)
)


class FakeDirectory:
    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        if wallet_id != WALLET.wallet_id:
            raise WalletNotFound(wallet_id)
        return WALLET

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        if customer_id != WALLET.customer_id:
            raise CustomerNotFound(customer_id)
        return [WALLET]


class FakeSource:
    """Counts reads; each read waits for ``gate`` and then fails ``failures`` times."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.cancelled = 0
        self.raw = 1_250_500_000

    async def snapshot(
        self, addresses: Sequence[str], *, with_prices: bool, timeout: float
    ) -> Snapshot:
        self.timeouts.append(timeout)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.failures:
            self.failures -= 1
            raise ChainUnavailable("polygon", "node down")
        return Snapshot(
            "polygon", 100, 1_700_000_000, {a: {"USDC": self.raw} for a in addresses}, {}
        )


def queries(source: FakeSource) -> BalanceQueries:
    return BalanceQueries(
        FakeDirectory(),
        {"polygon": source},
        {"polygon": (USDC,)},
        MemorySnapshotCache(60),
        base_currency="USD",
        minor_unit_digits=2,
        read_timeout=READ_TIMEOUT,
    )


@ASYNC
@pytest.mark.parametrize(
    ("deadline", "budget"), [(0.25, 0.25), (None, READ_TIMEOUT), (100.0, READ_TIMEOUT)]
)
async def test_source_gets_the_smaller_of_deadline_and_read_timeout(
    deadline: float | None, budget: float
) -> None:
    source = FakeSource()
    await queries(source).wallet_balance("default", "wal_one", deadline)
    assert source.timeouts == [budget]
    source2 = FakeSource()
    await queries(source2).customer_balances("default", "cus_one", deadline)
    assert source2.timeouts == [budget]


@ASYNC
async def test_concurrent_identical_reads_coalesce_into_one() -> None:
    source = FakeSource()
    source.gate.clear()
    balances = queries(source)
    callers = [
        asyncio.create_task(balances.wallet_balance("default", "wal_one")) for _ in range(50)
    ]
    await asyncio.sleep(0.01)
    source.gate.set()
    results = await asyncio.gather(*callers)
    assert len(source.timeouts) == 1
    assert {r.amounts[0].raw for r in results} == {1_250_500_000}
    assert not balances._inflight
    await balances.wallet_balance("default", "wal_one")  # warm: from the cache
    assert len(source.timeouts) == 1


@ASYNC
async def test_failures_are_not_cached() -> None:
    source = FakeSource()
    source.failures = 1
    balances = queries(source)
    with pytest.raises(ChainUnavailable):
        await balances.wallet_balance("default", "wal_one")
    assert not balances._inflight
    result = await balances.wallet_balance("default", "wal_one")
    assert result.amounts[0].raw == 1_250_500_000
    assert len(source.timeouts) == 2
    await balances.wallet_balance("default", "wal_one")
    assert len(source.timeouts) == 2


@ASYNC
async def test_a_cancelled_caller_does_not_cancel_the_shared_read() -> None:
    source = FakeSource()
    source.gate.clear()
    balances = queries(source)
    leaving = asyncio.create_task(balances.wallet_balance("default", "wal_one"))
    staying = asyncio.create_task(balances.wallet_balance("default", "wal_one"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    source.gate.set()
    result = await staying
    assert result.amounts[0].raw == 1_250_500_000
    assert source.cancelled == 0
    assert len(source.timeouts) == 1


# --- Multicall3 codec --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "signature"),
    [
        (multicall.AGGREGATE3, "aggregate3((address,bool,bytes)[])"),
        (multicall.BALANCE_OF, "balanceOf(address)"),
        (multicall.GET_ETH_BALANCE, "getEthBalance(address)"),
        (multicall.GET_BLOCK_NUMBER, "getBlockNumber()"),
        (multicall.GET_CURRENT_BLOCK_TIMESTAMP, "getCurrentBlockTimestamp()"),
        (multicall.LATEST_ROUND_DATA, "latestRoundData()"),
        (multicall.DECIMALS, "decimals()"),
    ],
)
def test_precomputed_selectors_match_their_signatures(selector: bytes, signature: str) -> None:
    assert selector == keccak(text=signature)[:4]


def test_aggregate3_calldata_round_trips() -> None:
    calls = [
        Call(USDC.address or "", multicall.BALANCE_OF + multicall.address_arg(ADDRESS)),
        Call(ADDRESS, multicall.GET_BLOCK_NUMBER),
        Call(ADDRESS, b""),
    ]
    data = encode_aggregate3(calls)
    assert data[:4] == multicall.AGGREGATE3
    (decoded,) = decode(["(address,bool,bytes)[]"], data[4:])
    assert [(to_checksum_address(t), ok, bytes(d)) for t, ok, d in decoded] == [
        (c.target, True, c.data) for c in calls
    ]
    assert multicall.address_arg(ADDRESS) == encode(["address"], [ADDRESS])


def test_aggregate3_results_decode_in_order() -> None:
    results = [(True, (2**256 - 1).to_bytes(32, "big")), (False, b"\x08\xc3\x79\xa0"), (True, b"")]
    assert decode_aggregate3(encode(["(bool,bytes)[]"], [results])) == [
        CallResult(ok, data) for ok, data in results
    ]
    assert decode_aggregate3(encode(["(bool,bytes)[]"], [[]])) == []


class Following:
    """Who follows what, as the watch hub or webhook emitter would say."""

    def __init__(self, tenants: dict[str, set[str]]) -> None:
        self.tenants = tenants

    async def tenants_following(
        self, network: str, addresses: Collection[str]
    ) -> dict[str, set[str]]:
        return {a: t for a, t in self.tenants.items() if a in addresses}


@ASYNC
async def test_the_followers_read_refreshes_only_the_following_tenants_cache() -> None:
    source = FakeSource()
    balances = queries(source)
    refresh = CacheRefresh(balances, [Following({ADDRESS: {"default"}}), Following({})])
    newer = Snapshot("polygon", 200, 1_700_000_100, {ADDRESS: {"USDC": 7}}, {})
    block = BlockRef("polygon", 200, "0x" + "11" * 32, 1_700_000_100)
    change = BalanceChange("polygon", ADDRESS, "USDC", 6, 1_250_500_000, 7)
    await refresh.balances_changed(block, [change], newer)

    followed = await balances.wallet_balance("default", WALLET.wallet_id)
    assert (followed.block_number, source.timeouts) == (200, [])  # from the follower's read
    other = await balances.wallet_balance("other", WALLET.wallet_id)
    assert (other.block_number, len(source.timeouts)) == (100, 1)  # its own upstream read


@ASYNC
async def test_two_tenants_never_share_a_cached_or_in_flight_read() -> None:
    source = FakeSource()
    source.gate.clear()
    balances = queries(source)
    both = asyncio.gather(
        balances.wallet_balance("default", WALLET.wallet_id),
        balances.wallet_balance("other", WALLET.wallet_id),
    )
    await asyncio.sleep(0)
    source.gate.set()
    await both
    assert len(source.timeouts) == 2
    await balances.wallet_balance("other", WALLET.wallet_id)
    assert len(source.timeouts) == 2  # each tenant's own cache serves it again
