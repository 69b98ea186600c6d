"""Keeps the balance cache in step with the block follower, tenant by tenant.

Registered before the listeners whose followers it refreshes (one before the
watch hub, one before the webhook outbox): an address that changed (or was
read for the first time) is stored as the single-address snapshot a wallet
query reads before those followers hear of it, so ``GetWalletBalance`` agrees
with the event just sent, with no upstream call.

Only the tenants that follow an address themselves (a watch stream, or a
webhook subscription over one of their wallets) get the read.  Giving it to
every tenant with a wallet there would tell one tenant, by a fresher block and
a faster answer, that another is watching the address.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from service.domain import BalanceChange, BlockRef, Snapshot

__all__ = ["AddressCache", "CacheRefresh", "FollowingTenants"]


class AddressCache(Protocol):
    """``service.balances.BalanceQueries.remember_address``."""

    async def remember_address(self, tenant: str, snapshot: Snapshot, address: str) -> None: ...


class FollowingTenants(Protocol):
    """Who follows what: the watch hub and the webhook emitter."""

    async def tenants_following(
        self, network: str, addresses: Collection[str]
    ) -> Mapping[str, set[str]]:
        """For each of ``addresses`` someone follows, the tenants following it."""
        ...


class CacheRefresh:
    """A ChangeListener and BaselineListener that stores fresh reads in followers' caches."""

    def __init__(self, cache: AddressCache, following: Sequence[FollowingTenants]) -> None:
        self._cache = cache
        self._following = tuple(following)

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        await self._remember(snapshot, {c.address for c in changes if c.network == block.network})

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        await self._remember(snapshot, addresses)

    async def _remember(self, snapshot: Snapshot, addresses: Collection[str]) -> None:
        addresses = {a for a in addresses if a in snapshot.balances}
        if not addresses:
            return
        tenants: dict[str, set[str]] = {}
        for source in self._following:
            found = await source.tenants_following(snapshot.network, addresses)
            for address, followers in found.items():
                tenants.setdefault(address, set()).update(followers)
        for address in sorted(tenants):
            for tenant in sorted(tenants[address]):
                await self._cache.remember_address(tenant, snapshot, address)
