"""Keeps the balance cache in step with the block follower.

Registered as the first listener of every follower: an address that changed
(or was read for the first time) is stored as the single-address snapshot a
wallet query reads, before any watch or webhook hears of it, so
``GetWalletBalance`` agrees with the event just sent, with no upstream call.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from service.domain import BalanceChange, BlockRef, Snapshot

__all__ = ["CacheRefresh"]


class AddressCache(Protocol):
    """``service.balances.BalanceQueries.remember_address``."""

    async def remember_address(self, snapshot: Snapshot, address: str) -> None: ...


class CacheRefresh:
    """A ChangeListener and BaselineListener that stores fresh reads in the snapshot cache."""

    def __init__(self, cache: AddressCache) -> None:
        self._cache = cache

    async def balances_changed(
        self, block: BlockRef, changes: Sequence[BalanceChange], snapshot: Snapshot
    ) -> None:
        for address in sorted({c.address for c in changes}):
            await self._cache.remember_address(snapshot, address)

    async def balances_baselined(
        self, block: BlockRef, addresses: Collection[str], snapshot: Snapshot
    ) -> None:
        for address in addresses:
            await self._cache.remember_address(snapshot, address)
