"""The snapshot cache adapter: in process memory, bounded by a TTL and a number of entries.

A plain ``OrderedDict`` in least-recently-used order, each entry with its
expiry time.  aiocache's memory backend (used before) has no size bound, so a
server asked for a million distinct wallets kept a million snapshots until
their TTL ran out; it also wrapped every operation in ``asyncio.wait_for``.
``cachetools.TTLCache`` would do, but it is one more dependency for forty
lines whose behaviour (expiry on read, eviction order, an injectable clock) the
tests below pin down exactly.

- ``get`` of an expired entry drops it and misses; a hit makes it the most
  recently used.
- ``set`` stores with a fresh TTL (none when ``immutable``: a final block's
  snapshot), drops expired entries at the old end, and then the least
  recently used ones while more than ``max_entries`` are held.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from service.domain import Snapshot

__all__ = ["DEFAULT_MAX_ENTRIES", "MemorySnapshotCache"]

DEFAULT_MAX_ENTRIES = 100_000  # about 1 KB each for a three-token wallet (scripts/bench_memory.py)


class MemorySnapshotCache:
    """Snapshots by key, each for ``ttl_seconds``, at most ``max_entries`` of them (LRU)."""

    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Snapshot]] = OrderedDict()
        # Entries dropped: past their TTL, or over max_entries (service.metrics_sampler).
        self.expired = self.evicted = 0

    def __len__(self) -> int:
        """Entries held, expired ones not yet dropped included."""
        return len(self._entries)

    async def get(self, key: str) -> Snapshot | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            self.expired += 1
            return None
        self._entries.move_to_end(key)
        return entry[1]

    async def set(self, key: str, snapshot: Snapshot, *, immutable: bool = False) -> None:
        now = self._clock()
        entries = self._entries
        entries[key] = (float("inf") if immutable else now + self._ttl, snapshot)
        entries.move_to_end(key)
        # Expired entries at the least recently used end go first (amortised O(1) per set).
        while entries:
            oldest = next(iter(entries.values()))
            if oldest[0] > now:
                break
            entries.popitem(last=False)
            self.expired += 1
        while len(entries) > self._max_entries:
            entries.popitem(last=False)
            self.evicted += 1

    async def delete(self, key: str) -> None:
        self._entries.pop(key, None)

    async def fill(
        self, key: str, read: Callable[[float], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        """Cached, else read and stored: one process, so no one else to wait for."""
        cached = await self.get(key)
        if cached is not None:
            return cached
        snapshot = await read(timeout)
        await self.set(key, snapshot)
        return snapshot

    async def aclose(self) -> None:
        self._entries.clear()
