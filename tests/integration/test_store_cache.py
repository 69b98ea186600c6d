"""The read-through caches of ``service.store.cached`` over the real stores, on SQLite and
on PostgreSQL (``backend``).

Store calls are counted by a spy between the cache and the store; other processes'
(replicas') writes are made through a second bundle of stores on the same database
(a real ``balances keys revoke`` process against a running server is in
tests/integration/test_warm_path.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from service.auth.keys import new_api_key
from service.domain import Wallet
from service.errors import CustomerNotFound, InvalidArgument, NotFound, WalletNotFound
from service.records import ApiKeyRecord, WalletRow
from service.store.cached import CachedApiKeyStore, CachedWalletDirectory, StoreChanges
from service.store.stores import Stores
from tests.support.store_backends import BACKENDS, StoreBackend, store_backend, uncached_stores

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACME, GLOBEX = "acme", "globex"
ADDR_1 = "0x742D35CC6634c0532925A3b844BC9E7595F0BEb0"
ADDR_2 = "0xdAC17F958D2ee523a2206206994597C13D831ec7"
ADDR_3 = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


class Spy:
    """Forwards every call to ``inner`` and counts it by method name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._inner, name)

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return await method(*args, **kwargs)

        return counted


class Clock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Cached:
    """A cache pair over one open database, with spies on the stores and a test clock."""

    def __init__(self, stores: Stores, *, max_lag: float = 1.0, **sizes: int) -> None:
        self.clock = Clock()
        self.changes = StoreChanges(stores.database.data_version, max_lag=max_lag, clock=self.clock)
        key_store, wallet_store = uncached_stores(stores)
        self.key_store = Spy(key_store)
        self.wallet_store = Spy(wallet_store)
        key_sizes = {k: v for k, v in sizes.items() if k == "max_keys"}
        wallet_sizes = {k: v for k, v in sizes.items() if k != "max_keys"}
        self.keys = CachedApiKeyStore(self.key_store, self.changes, **key_sizes)
        self.wallets = CachedWalletDirectory(self.wallet_store, self.changes, **wallet_sizes)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return store_backend(request, tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def stores(backend: StoreBackend) -> AsyncIterator[Stores]:
    async with await backend.open() as opened:
        yield opened


@pytest_asyncio.fixture(loop_scope="session")
async def elsewhere(backend: StoreBackend, stores: Stores) -> AsyncIterator[Stores]:
    """Stores on another connection to the same database: another process (replica)."""
    async with await backend.open() as opened:
        yield opened


async def add_key(stores: Stores, tenant: str = ACME) -> str:
    key = new_api_key()
    await stores.api_keys.add_key(key.key_id, tenant, key.digest)
    return key.key_id


async def register(stores: Stores, customer: str, address: str, tenant: str = ACME) -> Wallet:
    wallet, _ = await stores.wallets.register_wallet(tenant, customer, "polygon", address)
    return wallet


# ---------------------------------------------------------------- warm lookups


async def test_warm_lookups_make_no_store_call(stores: Stores) -> None:
    key_id = await add_key(stores)
    wallet = await register(stores, "cus_1", ADDR_1)
    cached = Cached(stores)
    for _ in range(5):
        found = await cached.keys.key_by_id(key_id)
        assert found is not None and found[0].tenant == ACME
        assert await cached.wallets.get_wallet(ACME, wallet.wallet_id) == wallet
        assert await cached.wallets.customer_wallets(ACME, "cus_1") == [wallet]
    assert cached.key_store.calls == {"key_by_id": 1}
    assert cached.wallet_store.calls == {"get_wallet": 1, "customer_wallets": 1}


async def test_a_customers_list_is_handed_out_as_a_copy(stores: Stores) -> None:
    wallet = await register(stores, "cus_1", ADDR_1)
    cached = Cached(stores)
    (await cached.wallets.customer_wallets(ACME, "cus_1")).clear()
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [wallet]


# ---------------------------------------------------------------- misses


async def test_misses_are_never_cached_and_look_alike(stores: Stores) -> None:
    foreign = await register(stores, "cus_g", ADDR_1, tenant=GLOBEX)
    await register(stores, "cus_g", ADDR_2, tenant=GLOBEX)
    cached = Cached(stores)
    for _ in range(3):
        assert await cached.keys.key_by_id("0123456789ab") is None
        for wallet_id in (foreign.wallet_id, "wal_nobody"):  # another tenant's, and none
            with pytest.raises(WalletNotFound) as missing:
                await cached.wallets.get_wallet(ACME, wallet_id)
            assert str(missing.value) == str(WalletNotFound(wallet_id))
        with pytest.raises(CustomerNotFound):
            await cached.wallets.customer_wallets(ACME, "cus_g")  # globex's customer
    # Every miss went to the store: the foreign ID exactly as often as the missing one.
    assert cached.key_store.calls == {"key_by_id": 3}
    assert cached.wallet_store.calls == {"get_wallet": 6, "customer_wallets": 3}


async def test_many_distinct_misses_leave_the_tables_empty(stores: Stores) -> None:
    cached = Cached(stores)
    for n in range(300):
        assert await cached.keys.key_by_id(f"{n:012x}") is None
        with pytest.raises(WalletNotFound):
            await cached.wallets.get_wallet(ACME, f"wal_probe_{n}")
    assert (len(cached.keys._keys), len(cached.wallets._wallets)) == (0, 0)


async def test_malformed_ids_are_refused_as_before(stores: Stores) -> None:
    cached = Cached(stores)
    with pytest.raises(InvalidArgument):
        await cached.wallets.get_wallet(ACME, "not a wallet id")
    with pytest.raises(InvalidArgument):
        await cached.wallets.customer_wallets(ACME, "not a customer")


# ---------------------------------------------------------------- bounds


async def test_tables_are_bounded_least_recently_used_out(stores: Stores) -> None:
    key_ids = [await add_key(stores) for _ in range(4)]
    cached = Cached(stores, max_keys=3)
    for key_id in key_ids[:3]:
        await cached.keys.key_by_id(key_id)
    await cached.keys.key_by_id(key_ids[0])  # used again: the oldest is now the second
    await cached.keys.key_by_id(key_ids[3])
    assert len(cached.keys._keys) == 3
    before = cached.key_store.calls["key_by_id"]
    await cached.keys.key_by_id(key_ids[0])  # kept
    assert cached.key_store.calls["key_by_id"] == before
    await cached.keys.key_by_id(key_ids[1])  # evicted: read again
    assert cached.key_store.calls["key_by_id"] == before + 1


async def test_customer_lists_count_their_wallets_toward_the_bound(stores: Stores) -> None:
    for address in (ADDR_1, ADDR_2, ADDR_3):
        await register(stores, "cus_big", address)
    await register(stores, "cus_small", ADDR_1, tenant=GLOBEX)
    cached = Cached(stores, max_customer_wallets=2)
    for _ in range(2):
        assert len(await cached.wallets.customer_wallets(ACME, "cus_big")) == 3
        assert len(await cached.wallets.customer_wallets(GLOBEX, "cus_small")) == 1
    # Three wallets are more than the whole table holds: never kept; the small one is.
    assert cached.wallet_store.calls["customer_wallets"] == 3


# ---------------------------------------------------------------- writes in this process


async def test_revocation_through_the_cache_is_effective_at_once(stores: Stores) -> None:
    key_id = await add_key(stores)
    cached = Cached(stores)
    found = await cached.keys.key_by_id(key_id)
    assert found is not None and found[0].revoked_at is None
    await cached.keys.revoke_key(key_id)
    found = await cached.keys.key_by_id(key_id)
    assert found is not None and found[0].revoked_at is not None
    with pytest.raises(NotFound):
        await cached.keys.revoke_key("0123456789ab")


async def test_deletion_through_the_cache_is_effective_at_once(stores: Stores) -> None:
    kept = await register(stores, "cus_1", ADDR_1)
    deleted = await register(stores, "cus_1", ADDR_2)
    cached = Cached(stores)
    await cached.wallets.get_wallet(ACME, deleted.wallet_id)
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [kept, deleted]
    await cached.wallets.delete_wallet(ACME, "cus_1", deleted.wallet_id)
    with pytest.raises(WalletNotFound):
        await cached.wallets.get_wallet(ACME, deleted.wallet_id)
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [kept]


async def test_imports_and_registrations_are_effective_at_once(stores: Stores) -> None:
    first = await register(stores, "cus_1", ADDR_1)
    cached = Cached(stores)
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [first]
    second, created = await cached.wallets.register_wallet(ACME, "cus_1", "polygon", ADDR_2)
    assert created
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [first, second]
    (third,) = await cached.wallets.import_wallets(ACME, [WalletRow("cus_1", "polygon", ADDR_3)])
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [first, second, third]


async def test_a_lookup_racing_a_revocation_does_not_keep_the_old_record(
    stores: Stores,
) -> None:
    """The lookup read the key before the revocation and returns after it: not stored."""
    key_id = await add_key(stores)
    cached = Cached(stores)
    release = asyncio.Event()
    read = cached.key_store.__getattr__("key_by_id")

    async def slow_read(key: str) -> tuple[ApiKeyRecord, bytes] | None:
        found = await read(key)
        await release.wait()
        return found

    cached.key_store.key_by_id = slow_read  # type: ignore[method-assign]
    lookup = asyncio.create_task(cached.keys.key_by_id(key_id))
    await asyncio.sleep(0.05)  # the lookup has read the unrevoked record and waits
    await cached.keys.revoke_key(key_id)
    release.set()
    old = await lookup
    assert old is not None and old[0].revoked_at is None  # it began before the revocation
    found = await cached.keys.key_by_id(key_id)
    assert found is not None and found[0].revoked_at is not None


# ---------------------------------------------------------------- writes elsewhere


async def test_another_connections_revocation_is_seen_within_max_lag(
    stores: Stores, elsewhere: Stores
) -> None:
    key_id = await add_key(stores)
    cached = Cached(stores, max_lag=1.0)
    await cached.keys.key_by_id(key_id)
    await elsewhere.api_keys.revoke_key(key_id)
    cached.clock.now += 0.5  # within max_lag of the last check: the cached view may serve
    found = await cached.keys.key_by_id(key_id)
    assert found is not None and found[0].revoked_at is None
    cached.clock.now += 0.5  # max_lag since the last check: checked before answering
    found = await cached.keys.key_by_id(key_id)
    assert found is not None and found[0].revoked_at is not None


async def test_another_connections_writes_drop_every_table(
    stores: Stores, elsewhere: Stores
) -> None:
    first = await register(stores, "cus_1", ADDR_1)
    doomed = await register(stores, "cus_1", ADDR_2)
    cached = Cached(stores, max_lag=1.0)
    await cached.wallets.get_wallet(ACME, doomed.wallet_id)
    assert len(await cached.wallets.customer_wallets(ACME, "cus_1")) == 2
    await elsewhere.wallets.delete_wallet(ACME, "cus_1", doomed.wallet_id)
    (added,) = await elsewhere.wallets.import_wallets(ACME, [WalletRow("cus_1", "polygon", ADDR_3)])
    cached.clock.now += 1.0
    with pytest.raises(WalletNotFound):
        await cached.wallets.get_wallet(ACME, doomed.wallet_id)
    assert await cached.wallets.customer_wallets(ACME, "cus_1") == [first, added]


async def test_own_writes_do_not_drop_the_tables(stores: Stores) -> None:
    """This bundle's commits leave ``data_version`` alone: only what changed goes."""
    kept = await register(stores, "cus_1", ADDR_1)
    cached = Cached(stores, max_lag=1.0)
    await cached.wallets.get_wallet(ACME, kept.wallet_id)
    await cached.wallets.register_wallet(ACME, "cus_2", "polygon", ADDR_2)
    await add_key(stores)
    cached.clock.now += 5.0
    await cached.wallets.get_wallet(ACME, kept.wallet_id)
    assert cached.wallet_store.calls["get_wallet"] == 1


async def test_one_check_serves_every_concurrent_lookup(stores: Stores) -> None:
    key_id = await add_key(stores)
    checks = 0
    version: Callable[[], Any] = stores.database.data_version

    async def counted_version() -> int:
        nonlocal checks
        checks += 1
        return int(await version())

    cached = Cached(stores)
    cached.changes._version = counted_version
    await asyncio.gather(*(cached.keys.key_by_id(key_id) for _ in range(50)))
    assert checks == 1
