"""``CallQuotas`` with the rate limits shared by every replica through Redis.

Each API key's token bucket lives in Redis (``balances:quota:v1:<hash of the
key id>``: the tokens and when they were last counted) and is taken from by
one Lua script per call, timed by the Redis server's clock, so replicas whose
clocks differ still share one bucket.  A key idle long enough to refill
expires.  The semantics are ``MemoryCallQuotas``'s: the same waits, holds,
reservations and ``RateLimited`` refusals (RetryInfo), with the bucket counted
once for the cluster instead of once per process.

The concurrency quotas (unary calls in flight, watch streams open) stay per
process: a count shared through Redis would outlive a replica killed with its
calls open, and the limit they exist for (one process's tasks and sockets) is
per process anyway.

Redis down (``service.redis_link``): the limits are enforced per process, as
without Redis, until it answers again.  Neither open (a key would be
unlimited) nor closed (every call refused for an outage of a cache): with N
replicas a key gets at most N times its rate meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from service.errors import RateLimited
from service.quotas import (
    CallKind,
    MemoryCallQuotas,
    Quota,
    QuotaPolicy,
    _check_room,
    _KeyState,
    _leave,
    _milliseconds_up,
    _patience,
    over_rate_message,
)
from service.redis_link import REDIS_ERRORS, RedisLink

__all__ = ["RedisCallQuotas"]

# KEYS: bucket; ARGV: rate per second, burst, longest wait (s).  Returns {taken, wait}:
# taken 1 with the seconds to wait for the reserved token, or 0 with the seconds until
# one will be there.  Numbers go back as strings (Redis truncates Lua numbers to integers).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
  at = now
end
local wait = 0
if tokens < 1 then
  wait = (1 - tokens) / rate
  if wait > tonumber(ARGV[3]) then return {0, tostring(wait)} end
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {1, tostring(wait)}
"""
# KEYS: bucket; ARGV: burst.  Give back a reserved token its call never used.
_REFUND = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens'))
if tokens then
  redis.call('HSET', KEYS[1], 'tokens', tostring(math.min(tonumber(ARGV[1]), tokens + 1)))
end
return 1
"""


class RedisCallQuotas(MemoryCallQuotas):
    """Rate limits in Redis, concurrency counts in this process; in process alone while
    Redis is down (the inherited ``MemoryCallQuotas`` does it)."""

    def __init__(
        self,
        link: RedisLink,
        policy: QuotaPolicy,
        *,
        prefix: str = "balances:",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_held: int = 1024,
        share: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(policy, clock, sleep, max_held, share)
        self._link = link
        self._prefix = f"{prefix}quota:v1:"
        self._take_script = link.client.register_script(_TAKE)
        self._refund_script = link.client.register_script(_REFUND)

    def bucket_key(self, key_id: str) -> str:
        """Where ``key_id``'s bucket lives in Redis."""
        return self._prefix + hashlib.blake2b(key_id.encode(), digest_size=16).hexdigest()

    @asynccontextmanager
    async def admit(
        self, tenant: str, key_id: str, kind: CallKind, *, time_left: float | None = None
    ) -> AsyncIterator[None]:
        if not self._link.available:
            async with super().admit(tenant, key_id, kind, time_left=time_left):
                yield
            return
        patience = _patience(time_left)
        try:
            state, wait, shared = await self._take_shared(tenant, key_id, kind, patience)
        except RateLimited as refused:
            await self._hold(patience, refused)
            state, wait, shared = await self._take_shared(tenant, key_id, kind, 0.0)
        try:
            if wait:
                try:
                    await self._sleep(wait)  # for the token this call reserved
                except BaseException:
                    await self._refund(key_id, state, shared)
                    raise
            yield
        finally:
            _leave(state, kind)

    async def _take_shared(
        self, tenant: str, key_id: str, kind: CallKind, max_wait: float
    ) -> tuple[_KeyState, float, bool]:
        """Count one call in: room in this process, then a token from the shared bucket
        (from this process's bucket when Redis fails); ``(state, wait, shared)``."""
        if not self._link.available:
            return (*self._take(tenant, key_id, kind, max_wait), False)
        state = self._state(tenant, key_id, self._clock())
        _check_room(state, key_id, kind)
        # Counted before the await, so concurrent calls cannot all pass the check above.
        if kind is CallKind.UNARY:
            state.in_flight += 1
        else:
            state.streams += 1
        try:
            wait = await self._token(key_id, state.quota, max_wait)
        except BaseException as exc:
            if kind is CallKind.UNARY:
                state.in_flight -= 1
            else:
                state.streams -= 1
            if isinstance(exc, REDIS_ERRORS):
                self._link.failed(exc)
                return (*self._take(tenant, key_id, kind, max_wait), False)
            raise
        return state, wait, True

    async def _token(self, key_id: str, quota: Quota, max_wait: float) -> float:
        taken, seconds = await self._take_script(
            keys=[self.bucket_key(key_id)],
            args=[repr(quota.requests_per_second), quota.burst, repr(max_wait)],
        )
        self._link.succeeded()
        wait = _milliseconds_up(float(seconds))
        if not int(taken):
            raise RateLimited(over_rate_message(key_id, quota, wait), wait)
        return wait

    async def _refund(self, key_id: str, state: _KeyState, shared: bool) -> None:
        if not shared:
            state.tokens = min(float(state.quota.burst), state.tokens + 1.0)
            return
        try:
            await self._refund_script(keys=[self.bucket_key(key_id)], args=[state.quota.burst])
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
