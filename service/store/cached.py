"""Read-through caches in front of the wallet directory and the API key store.

Every authenticated call looks up its API key, and every balance call a wallet
or a customer's wallets: without these, each is a database round trip.  The
records barely change (a key is revoked, a wallet deleted or a customer's list
grown), so they are kept in memory, in bounded LRU tables, by decorators that
implement the same ports: every consumer (authentication, balance queries,
the registry, watches) sees one coherent view, and the writes that change a
record go through the same object that drops it.

Freshness:

* A write through these objects (revoke, delete, import, register) drops what
  it changes before it returns: effective at once in this process.
* A write by anyone else (``balances keys revoke`` or ``balances wallets
  import`` in another process, another replica) is noticed through
  ``StoreChanges``: a number that moves whenever another writer commits
  (SQLite: ``PRAGMA data_version``).  It is read at most once per
  ``max_lag`` seconds, by the first lookup that needs it (so no lookup is ever
  answered from a view older than ``max_lag``); when it moved, everything is
  dropped.  ``StoreChanges.changed_elsewhere`` is the hook for a change feed
  across replicas (the scale-out issue).
* A lookup that read the store before an invalidation and would store after it
  (a race) does not store: every invalidation moves a generation counter.

Only records that exist are kept.  A miss (unknown key id, unknown or foreign
wallet, unknown customer) is never cached, so it cannot flood the tables, and
it costs what it cost before: a database lookup.  Wallets and customers are
cached per (tenant, ID), so another tenant's ID misses exactly like an ID that
does not exist, in the same time.  (A key id is public, see
``service.auth.keys``: that a known key id answers faster reveals nothing.)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from service.domain import Wallet
from service.records import ApiKeyRecord, WalletCursor, WalletRow

if TYPE_CHECKING:
    from service.ports import ApiKeyStore, WalletDirectory

__all__ = [
    "DEFAULT_MAX_LAG_SECONDS",
    "CachedApiKeyStore",
    "CachedWalletDirectory",
    "StoreChanges",
]

# How long another process's write (a revocation by `balances keys revoke`) may go unseen.
DEFAULT_MAX_LAG_SECONDS = 1.0
MAX_KEYS = 10_000  # key records (each a few hundred bytes)
MAX_WALLETS = 10_000  # wallet records by ID
MAX_CUSTOMER_WALLETS = 20_000  # wallet records in customers' lists, all lists together

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class StoreChanges:
    """When the caches of one store must forget: its own invalidations, and others' writes.

    ``version`` reads a number that changes whenever someone else commits to the
    store.  ``generation`` moves on every invalidation (and on every change
    elsewhere); a fill that began under an older generation is not stored.
    """

    def __init__(
        self,
        version: Callable[[], Awaitable[int]],
        *,
        max_lag: float = DEFAULT_MAX_LAG_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._version = version
        self._max_lag = max_lag
        self._clock = clock
        self._seen: int | None = None
        self._check_at = float("-inf")  # when the version must next be read
        self._checking: asyncio.Future[None] | None = None
        self._forget_all: list[Callable[[], None]] = []
        self.generation = 0

    def on_forget_all(self, forget: Callable[[], None]) -> None:
        """Call ``forget`` when everything must go (the store changed elsewhere)."""
        self._forget_all.append(forget)

    def invalidated(self) -> None:
        """Something was dropped: fills that began before now must not store."""
        self.generation += 1

    def changed_elsewhere(self) -> None:
        """The store changed in a way this process did not see: drop everything."""
        self.generation += 1
        for forget in self._forget_all:
            forget()

    async def fresh(self) -> None:
        """Return once the caches reflect every outside write older than ``max_lag``."""
        if self._clock() < self._check_at:
            return
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._check())
            self._checking.add_done_callback(self._checked)
        # shield: one caller giving up must not cancel the check the others wait for.
        await asyncio.shield(self._checking)

    async def _check(self) -> None:
        started = self._clock()
        version = await self._version()
        if self._seen is not None and version != self._seen:
            self.changed_elsewhere()
        self._seen = version
        self._check_at = started + self._max_lag

    def _checked(self, check: asyncio.Future[None]) -> None:
        self._checking = None
        if not check.cancelled():
            check.exception()  # retrieved here; the waiting callers raise it themselves


class _Lru(Generic[_K, _V]):
    """A bounded table, least recently used out first; ``weight`` counts toward the bound."""

    def __init__(self, capacity: int, weight: Callable[[_V], int] = lambda _: 1) -> None:
        self._entries: OrderedDict[_K, _V] = OrderedDict()
        self._capacity = capacity
        self._weight = weight
        self._total = 0

    def get(self, key: _K) -> _V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: _K, value: _V) -> None:
        weight = self._weight(value)
        if weight > self._capacity:
            return  # larger than the whole table: not worth evicting everything for
        self.pop(key)
        self._entries[key] = value
        self._total += weight
        while self._total > self._capacity:
            _, evicted = self._entries.popitem(last=False)
            self._total -= self._weight(evicted)

    def pop(self, key: _K) -> None:
        value = self._entries.pop(key, None)
        if value is not None:
            self._total -= self._weight(value)

    def clear(self) -> None:
        self._entries.clear()
        self._total = 0

    def __len__(self) -> int:
        return len(self._entries)


class CachedApiKeyStore:
    """``ApiKeyStore`` with key records kept in memory (revoked ones too: they fail fast)."""

    def __init__(
        self, store: ApiKeyStore, changes: StoreChanges, *, max_keys: int = MAX_KEYS
    ) -> None:
        self._store = store
        self._changes = changes
        self._keys: _Lru[str, tuple[ApiKeyRecord, bytes]] = _Lru(max_keys)
        changes.on_forget_all(self._keys.clear)

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        await self._changes.fresh()
        found = self._keys.get(key_id)
        if found is not None:
            return found
        generation = self._changes.generation
        found = await self._store.key_by_id(key_id)
        if found is not None and generation == self._changes.generation:
            self._keys.put(key_id, found)
        return found

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        try:
            return await self._store.add_key(key_id, tenant, digest)
        finally:
            self._forget(key_id)

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        try:
            return await self._store.revoke_key(key_id)
        finally:
            self._forget(key_id)  # even when the outcome is unknown (cancelled)

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return await self._store.list_keys(tenant)

    def forget_key(self, key_id: str) -> None:
        """Drop one key (for a change feed from other replicas)."""
        self._forget(key_id)

    def _forget(self, key_id: str) -> None:
        self._keys.pop(key_id)
        self._changes.invalidated()


class CachedWalletDirectory:
    """``WalletDirectory`` with wallets by (tenant, ID) and customers' lists kept in memory."""

    def __init__(
        self,
        directory: WalletDirectory,
        changes: StoreChanges,
        *,
        max_wallets: int = MAX_WALLETS,
        max_customer_wallets: int = MAX_CUSTOMER_WALLETS,
    ) -> None:
        self._directory = directory
        self._changes = changes
        self._wallets: _Lru[tuple[str, str], Wallet] = _Lru(max_wallets)
        self._customers: _Lru[tuple[str, str], tuple[Wallet, ...]] = _Lru(max_customer_wallets, len)
        changes.on_forget_all(self._wallets.clear)
        changes.on_forget_all(self._customers.clear)

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        await self._changes.fresh()
        key = (tenant, wallet_id)
        wallet = self._wallets.get(key)
        if wallet is not None:
            return wallet
        generation = self._changes.generation
        wallet = await self._directory.get_wallet(tenant, wallet_id)  # raises on a miss
        if generation == self._changes.generation:
            self._wallets.put(key, wallet)
        return wallet

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        await self._changes.fresh()
        key = (tenant, customer_id)
        wallets = self._customers.get(key)
        if wallets is not None:
            return list(wallets)
        generation = self._changes.generation
        found = await self._directory.customer_wallets(tenant, customer_id)  # raises on a miss
        if generation == self._changes.generation:
            self._customers.put(key, tuple(found))
        return found

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        try:
            return await self._directory.import_wallets(tenant, rows)
        finally:
            for customer_id in {row.customer_id for row in rows}:
                self._customers.pop((tenant, customer_id))
            self._changes.invalidated()

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        try:
            return await self._directory.register_wallet(tenant, customer_id, network, address)
        finally:
            self.forget_customer(tenant, customer_id)

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        return await self._directory.list_wallets(tenant, customer_id, after=after, limit=limit)

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        try:
            return await self._directory.delete_wallet(tenant, customer_id, wallet_id)
        finally:
            self.forget_wallet(tenant, customer_id, wallet_id)

    def forget_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> None:
        """Drop one wallet and its customer's list (also for a change feed from replicas)."""
        self._wallets.pop((tenant, wallet_id))
        self.forget_customer(tenant, customer_id)

    def forget_customer(self, tenant: str, customer_id: str) -> None:
        """Drop a customer's list (also for a change feed from replicas)."""
        self._customers.pop((tenant, customer_id))
        self._changes.invalidated()


if TYPE_CHECKING:
    # Checked by mypy: the classes are the ports.
    _keys: type[ApiKeyStore] = CachedApiKeyStore
    _wallets: type[WalletDirectory] = CachedWalletDirectory
