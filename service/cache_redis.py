"""The snapshot cache adapter in Redis: shared by every replica, with single-flight across them.

redis-py's ``redis.asyncio`` directly, not aiocache: aiocache's Redis backend
calls ``setex`` and ``close``, which redis-py 8 deprecates, and the suite's
``filterwarnings = error`` turns those DeprecationWarnings into failures; the
few commands needed here (GET, SET PX, DEL and two Lua scripts) are less code
than the wrapper's configuration.

Keys: ``balances:snap:v1:<blake2b-128 of the caller's key>`` (the caller's key
is already a hash of tenant, network and addresses; hashing again means nothing
a caller puts in a key can ever appear in Redis).  ``v1`` is the value format
(``service.snapshot_codec``): a replica running another format never reads
this one's values.  Values expire after the cache TTL; an immutable one (a
final block's snapshot) after ``IMMUTABLE_TTL_SECONDS``.

``fill`` is single-flight across replicas.  A miss runs one Lua script that
either returns the value or takes the key's *lease* (``SET key:lease token NX
PX``); the replica holding the lease reads upstream, renews the lease every
third of its life while reading, then stores the value and drops the lease in
one script.  Every other replica runs the same script again with a growing
pause (2 ms doubling to 50 ms) until the value appears, or the lease is gone
without a value (the holder's read failed, or it died and the lease expired:
at most ``lease_seconds`` later), and then takes the lease itself.  So N
replicas missing one key together cost one upstream read; within a replica,
``BalanceQueries`` already coalesces concurrent misses into one ``fill``.

No near cache: every ``get`` is one round trip (about 0.1 ms on loopback), so a
deletion reaches every replica at once with nothing to invalidate.

Redis failing never fails a read: ``get`` misses, ``set`` and ``delete`` are
skipped, ``fill`` reads upstream without a lease (see ``service.redis_link``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

from service.domain import Snapshot
from service.redis_link import REDIS_ERRORS, RedisLink
from service.snapshot_codec import decode_snapshot, encode_snapshot

__all__ = ["DEFAULT_LEASE_SECONDS", "IMMUTABLE_TTL_SECONDS", "RedisSnapshotCache"]

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 2.0  # how long a dead holder keeps the other replicas waiting, at most
# A final block's snapshot never changes: kept a day (Redis's memory is the bound).
IMMUTABLE_TTL_SECONDS = 86_400.0
_FIRST_PAUSE = 0.002
_LONGEST_PAUSE = 0.05

# KEYS: value, lease; ARGV: token, lease ms.  The value, else whether the lease was taken.
_GET_OR_LEASE = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 1} end
return {false, 0}
"""
# KEYS: value, lease; ARGV: data, ttl ms, token.  Store the value, then drop our lease.
_STORE_AND_RELEASE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""
# KEYS: lease; ARGV: token, lease ms (0: drop it).  Only the holder's token may touch it.
_RENEW_OR_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


class RedisSnapshotCache:
    """``SnapshotCache`` in Redis, each value for ``ttl_seconds``."""

    def __init__(
        self,
        link: RedisLink,
        ttl_seconds: float,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        prefix: str = "balances:",
    ) -> None:
        self._link = link
        self._ttl_ms = max(1, round(ttl_seconds * 1000))
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._prefix = f"{prefix}snap:v1:"
        client = link.client
        self._get_or_lease = client.register_script(_GET_OR_LEASE)
        self._store_and_release = client.register_script(_STORE_AND_RELEASE)
        self._renew_or_release = client.register_script(_RENEW_OR_RELEASE)
        self.upstream_reads = 0  # reads this instance made through ``fill`` (for tests, scripts)

    def redis_key(self, key: str) -> str:
        """Where ``key``'s snapshot lives in Redis."""
        return self._prefix + hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    async def get(self, key: str) -> Snapshot | None:
        if not self._link.available:
            return None
        try:
            data = await self._link.client.get(self.redis_key(key))
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return None
        self._link.succeeded()
        return None if data is None else _decoded(data)

    async def set(self, key: str, snapshot: Snapshot, *, immutable: bool = False) -> None:
        if not self._link.available:
            return
        ttl_ms = round(IMMUTABLE_TTL_SECONDS * 1000) if immutable else self._ttl_ms
        try:
            await self._link.client.set(self.redis_key(key), encode_snapshot(snapshot), px=ttl_ms)
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
        else:
            self._link.succeeded()

    async def delete(self, key: str) -> None:
        # Tried even while the link is marked down: a deletion is worth one more attempt.
        try:
            await self._link.client.delete(self.redis_key(key))
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
        else:
            self._link.succeeded()

    async def fill(
        self, key: str, read: Callable[[float], Awaitable[Snapshot]], timeout: float
    ) -> Snapshot:
        """The key's snapshot: cached, else read by whichever replica holds the lease."""
        deadline = time.monotonic() + timeout
        value_key = self.redis_key(key)
        lease_key = value_key + ":lease"
        token = secrets.token_hex(16)
        pause = _FIRST_PAUSE
        while self._link.available:
            try:
                data, leased = await self._get_or_lease(
                    keys=[value_key, lease_key], args=[token, self._lease_ms]
                )
            except REDIS_ERRORS as exc:
                self._link.failed(exc)
                break
            self._link.succeeded()
            if data is not None:
                cached = _decoded(data)
                if cached is not None:
                    return cached
                leased = 1  # unreadable: nobody can use it, so whoever looks replaces it
            if leased:
                return await self._read_as_holder(value_key, lease_key, token, read, deadline)
            left = deadline - time.monotonic()
            if left <= 0:
                break  # waited the caller's whole time: read, the caller's deadline decides
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, _LONGEST_PAUSE)
        # Redis down, or no value in time: read as a process alone would.
        self.upstream_reads += 1
        snapshot = await read(max(deadline - time.monotonic(), 0.0))
        await self.set(key, snapshot)
        return snapshot

    async def _read_as_holder(
        self,
        value_key: str,
        lease_key: str,
        token: str,
        read: Callable[[float], Awaitable[Snapshot]],
        deadline: float,
    ) -> Snapshot:
        renewal = asyncio.create_task(self._renew(lease_key, token))
        try:
            self.upstream_reads += 1
            snapshot = await read(max(deadline - time.monotonic(), 0.0))
        except BaseException:
            renewal.cancel()
            # Let the next replica read at once rather than when the lease runs out.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._renew_or_release(keys=[lease_key], args=[token, 0])
            raise
        renewal.cancel()
        try:
            await self._store_and_release(
                keys=[value_key, lease_key], args=[encode_snapshot(snapshot), self._ttl_ms, token]
            )
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
        return snapshot

    async def _renew(self, lease_key: str, token: str) -> None:
        """Keep the lease while reading (a read may take longer than the lease)."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                if not await self._renew_or_release(keys=[lease_key], args=[token, self._lease_ms]):
                    return  # lost (expired while Redis was unreachable): nothing to keep
            except REDIS_ERRORS:
                return

    async def aclose(self) -> None:
        """Nothing of its own: the link is closed by whoever opened it."""


def _decoded(data: bytes | str) -> Snapshot | None:
    try:
        return decode_snapshot(data)
    except ValueError as exc:
        log.warning("ignoring an unreadable cached snapshot: %s", exc)
        return None
