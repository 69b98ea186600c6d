"""Memory stays bounded however many distinct wallets are read: the snapshot cache's entry
bound (LRU) and TTL, its setting, and every other per-key structure of the queries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest

from service.balances import BalanceQueries
from service.cache import DEFAULT_MAX_ENTRIES, MemorySnapshotCache
from service.domain import PegPrice, Snapshot, Token, Wallet
from service.errors import ConfigError, WalletNotFound
from service.settings import NetworkSettings, Settings, load_settings
from service.settings.render import render_settings

ASYNC = pytest.mark.asyncio(loop_scope="session")
USDC = Token("USDC", 6, "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", PegPrice(Fraction(1)))


def snap(n: int) -> Snapshot:
    return Snapshot("polygon", n, 1_700_000_000 + n, {f"0x{n:040x}": {"USDC": n}}, {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the cache itself -----------------------------------------------------------------------


@ASYNC
async def test_the_cache_holds_at_most_max_entries_dropping_the_least_recently_used() -> None:
    cache = MemorySnapshotCache(60, max_entries=3, clock=Clock())
    for n in range(3):
        await cache.set(f"k{n}", snap(n))
    assert await cache.get("k0") == snap(0)  # k0 is now the most recently used: k1 goes first
    await cache.set("k3", snap(3))
    assert len(cache) == 3
    assert await cache.get("k1") is None
    assert [await cache.get(k) for k in ("k0", "k2", "k3")] == [snap(0), snap(2), snap(3)]
    await cache.set("k2", snap(22))  # a new value for a key held: no eviction, most recent now
    await cache.set("k4", snap(4))
    assert await cache.get("k0") is None and await cache.get("k2") == snap(22)
    for n in range(5, 1000):
        await cache.set(f"k{n}", snap(n))
        assert len(cache) <= 3
    assert [await cache.get(f"k{n}") for n in (997, 998, 999)] == [snap(997), snap(998), snap(999)]


@ASYNC
async def test_entries_expire_after_the_ttl_and_expired_ones_are_dropped_on_the_way() -> None:
    clock = Clock()
    cache = MemorySnapshotCache(30, max_entries=100, clock=clock)
    await cache.set("a", snap(1))
    clock.now += 29.9
    assert await cache.get("a") == snap(1)  # a hit does not extend the TTL
    await cache.set("b", snap(2))
    clock.now += 0.1
    assert await cache.get("a") is None  # exactly 30 s after it was stored
    assert len(cache) == 1
    clock.now += 30
    await cache.set("c", snap(3))  # "b" expired at the old end: dropped by this set
    assert len(cache) == 1 and await cache.get("c") == snap(3)
    await cache.delete("c")
    await cache.delete("never-there")
    assert len(cache) == 0


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        MemorySnapshotCache(30, max_entries=0)


# --- the setting ------------------------------------------------------------------------------


def _network() -> NetworkSettings:
    return NetworkSettings(
        name="polygon", chain_id=137, rpc_urls=("https://node.example",), tokens=(USDC,)
    )


def test_max_entries_defaults_is_validated_and_survives_rendering(tmp_path: Path) -> None:
    assert Settings(networks=(_network(),)).cache_max_entries == DEFAULT_MAX_ENTRIES == 100_000
    settings = Settings(networks=(_network(),), cache_max_entries=2_500)
    path = tmp_path / "balances.toml"
    path.write_text(render_settings(settings))
    assert "max_entries = 2500" in path.read_text()
    assert load_settings(path).cache_max_entries == 2_500
    for bad in (0, -1, 100_000_001):
        with pytest.raises(ConfigError, match="cache_max_entries"):
            Settings(networks=(_network(),), cache_max_entries=bad)


@pytest.mark.parametrize("bad", ["100", 1.5, True])
def test_max_entries_must_be_an_integer_in_toml(tmp_path: Path, bad: object) -> None:
    path = tmp_path / "balances.toml"
    text = render_settings(Settings(networks=(_network(),)))
    value = f'"{bad}"' if isinstance(bad, str) else str(bad).lower()
    path.write_text(text.replace("max_entries = 100000", f"max_entries = {value}"))
    with pytest.raises(ConfigError, match=r"cache\.max_entries"):
        load_settings(path)


# --- the queries: a stream of distinct wallets ----------------------------------------------


def wallet(n: int) -> Wallet:
    return Wallet(
        f"wal_{n}",
        "default",
        f"cus_{n}",
        "polygon",
        f"0x{n:040x}",
        datetime(2024, 1, 1, tzinfo=UTC),
    )


class Directory:
    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        if not wallet_id.startswith("wal_"):
            raise WalletNotFound(wallet_id)
        return wallet(int(wallet_id[4:]))

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        return [wallet(int(customer_id[4:]))]


class Source:
    def __init__(self) -> None:
        self.reads = 0

    async def snapshot(
        self,
        addresses: Sequence[str],
        *,
        with_prices: bool,
        timeout: float,
        block_number: int | None = None,
    ) -> Snapshot:
        self.reads += 1
        return Snapshot("polygon", 7, 1_700_000_000, {a: {"USDC": 1} for a in addresses}, {})


@ASYNC
async def test_reading_many_distinct_wallets_keeps_every_per_key_structure_bounded() -> None:
    source = Source()
    cache = MemorySnapshotCache(3600, max_entries=50)
    queries = BalanceQueries(
        Directory(),
        {"polygon": source},
        {"polygon": (USDC,)},
        cache,
        base_currency="USD",
        minor_unit_digits=2,
        read_timeout=5,
        max_stale={"polygon": 60},  # stale-if-error on: last good reads are kept too
        last_good_entries=20,
    )
    for batch in range(10):
        await asyncio.gather(
            *(queries.wallet_balance("default", f"wal_{batch * 100 + n}") for n in range(100))
        )
        assert len(cache) <= 50
        assert len(queries._last_good) <= 20
        assert not queries._inflight  # only reads under way are held
    assert source.reads == 1000
    assert len(cache) == 50
    # The most recent wallets are still cached; the first ones were dropped.
    await queries.wallet_balance("default", "wal_999")
    assert source.reads == 1000
    await queries.wallet_balance("default", "wal_0")
    assert source.reads == 1001
