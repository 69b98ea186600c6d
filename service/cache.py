"""The snapshot cache adapter: aiocache, in memory by default, with a TTL."""

from __future__ import annotations

from aiocache import SimpleMemoryCache

from service.domain import Snapshot

__all__ = ["MemorySnapshotCache"]


class MemorySnapshotCache:
    """aiocache's in-process memory backend; values are stored as objects, unserialized."""

    def __init__(self, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        # timeout=None: an in-memory operation cannot hang, and aiocache's default (5 s)
        # wraps every call in Python 3.11's asyncio.wait_for, which can swallow a
        # cancellation (a follower stopping at shutdown then never stops).
        self._cache = SimpleMemoryCache(timeout=None)

    async def get(self, key: str) -> Snapshot | None:
        value = await self._cache.get(key)
        return value if isinstance(value, Snapshot) else None

    async def set(self, key: str, snapshot: Snapshot) -> None:
        await self._cache.set(key, snapshot, ttl=self._ttl)

    async def delete(self, key: str) -> None:
        await self._cache.delete(key)

    async def aclose(self) -> None:
        await self._cache.clear()
        await self._cache.close()
