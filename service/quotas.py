"""Rate limits and concurrency quotas per API key: admit a call, or refuse it with a delay.

Every API key has a token bucket (``requests_per_second`` sustained, up to
``burst`` at once) and two concurrency counts: unary calls in flight, and watch
streams open.  The two counts are apart so a stream that lasts hours never
takes a unary call's place.  A call refused for any reason takes no token.
Quotas are set per tenant, each key of a tenant getting the tenant's quota,
with a server default for tenants that have none.

A call over a limit waits before it is refused, at most ``MAX_WAIT_SECONDS``
and never more than half the time its caller has left.  Over its rate, a call
whose token comes within that reserves the token and waits for it: a client a
little too fast is slowed to its rate, not failed.  Any other call over a
limit is held for a random part (half to all) of that time, checked once more,
and refused if there is still no room, with the delay after which there will
be.  The hold keeps a client that retries at once, ignoring the delay, from
turning refusals into load (each of its callers gets about one answer a
second, and a held call costs only its waiting task); the randomness keeps
held calls from all coming back at the same moment.  At most ``max_held``
calls are held at once across the server; beyond that, refusals are immediate.

``MemoryCallQuotas`` keeps the counts in this process, so with N replicas a key
gets N times its limits.  It is one implementation of the ``CallQuotas`` port;
with ``[cache] redis_url`` set, ``service.quotas_redis.RedisCallQuotas`` shares
each key's bucket through Redis (one atomic script per call) and keeps the
concurrency counts per process; nothing above the port changes.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from service.errors import RateLimited

__all__ = [
    "BUSY_RETRY_SECONDS",
    "MAX_WAIT_SECONDS",
    "CallKind",
    "CallQuotas",
    "MemoryCallQuotas",
    "Quota",
    "QuotaPolicy",
]

# The retry delay offered when a concurrency quota is full: when a slot frees is
# unknowable, and a second is long against a unary call and short for a retry loop.
BUSY_RETRY_SECONDS = 1.0
# The longest a call over a limit waits for room (see above).
MAX_WAIT_SECONDS = 2.0


class CallKind(enum.Enum):
    UNARY = "unary"  # counted in max_in_flight while it runs
    STREAM = "stream"  # counted in max_streams while it is open


@dataclass(frozen=True, kw_only=True)
class Quota:
    """One API key's limits.  The settings (``[limits]``) check the values and hold the defaults."""

    requests_per_second: float
    burst: int
    max_in_flight: int
    max_streams: int


@dataclass(frozen=True)
class QuotaPolicy:
    """The server's default quota, and the tenants that have their own."""

    default: Quota
    tenants: Mapping[str, Quota] = field(default_factory=dict)

    def quota_of(self, tenant: str) -> Quota:
        return self.tenants.get(tenant, self.default)


class CallQuotas(Protocol):
    """The port the transport asks before it runs an authenticated call."""

    def admit(
        self, tenant: str, key_id: str, kind: CallKind, *, time_left: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold one call's place while inside; entering raises ``RateLimited`` when over a limit.

        Entering may first wait a moment for room (at most half of ``time_left``, the
        seconds before the caller's deadline, if it has one).  The place is given back
        however the call ends (answer, error, cancellation).
        """
        ...


@dataclass
class _KeyState:
    quota: Quota  # its tenant's: a key never changes tenant
    tokens: float
    refilled_at: float
    in_flight: int = 0
    streams: int = 0


class MemoryCallQuotas:
    """``CallQuotas`` in this process's memory; ``clock`` is monotonic seconds (a test steps it).

    Admission is a few dictionary and float operations, with no I/O and no await,
    so a refusal costs next to nothing after authentication.  One state per key
    id seen: keys are only counted once authenticated, so the table is bounded by
    the keys issued, and idle states are dropped as it grows.
    """

    def __init__(
        self,
        policy: QuotaPolicy,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_held: int = 1024,
        share: Callable[[], float] = random.random,  # in [0, 1): the random part of a hold
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        self._max_held = max_held
        self._share = share
        self._held = 0  # calls waiting for room now
        self._keys: dict[str, _KeyState] = {}
        self._prune_at = 1024  # the table size at which idle states are next dropped

    def admit(
        self, tenant: str, key_id: str, kind: CallKind, *, time_left: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        return _Admitted(self, tenant, key_id, kind, time_left)

    async def _enter(
        self, tenant: str, key_id: str, kind: CallKind, time_left: float | None
    ) -> _KeyState:
        """Count one call in (``admit``'s entering), after any wait for room."""
        patience = _patience(time_left)
        try:
            state, wait = self._take(tenant, key_id, kind, patience)
        except RateLimited as refused:
            await self._hold(patience, refused)
            state, wait = self._take(tenant, key_id, kind, 0.0)  # room now, or refused
        if wait:
            try:
                await self._sleep(wait)  # for the token this call reserved
            except BaseException:
                state.tokens = min(float(state.quota.burst), state.tokens + 1.0)  # unused
                _leave(state, kind)
                raise
        return state

    async def _hold(self, patience: float, refused: RateLimited) -> None:
        """Hold a refused call back for a share of its ``patience`` before its one retry;
        re-raise ``refused`` when it has none or too many calls are held already."""
        if self._held >= self._max_held or patience <= 0:
            raise refused
        self._held += 1
        try:
            await self._sleep(patience * (0.5 + self._share() / 2))
        finally:
            self._held -= 1

    def in_use(self, key_id: str) -> tuple[int, int]:
        """(unary calls in flight, watch streams open) of a key, as counted now."""
        state = self._keys.get(key_id)
        return (0, 0) if state is None else (state.in_flight, state.streams)

    def _take(
        self, tenant: str, key_id: str, kind: CallKind, max_wait: float
    ) -> tuple[_KeyState, float]:
        """Count one call of ``key_id`` in, to start after the seconds returned (its token's
        wait, at most ``max_wait``), or raise ``RateLimited`` having taken nothing."""
        now = self._clock()
        state = self._state(tenant, key_id, now)
        _check_room(state, key_id, kind)
        quota = state.quota
        if now > state.refilled_at:  # a clock that stepped back neither drains nor refills
            refill = (now - state.refilled_at) * quota.requests_per_second
            state.tokens = min(float(quota.burst), state.tokens + refill)
            state.refilled_at = now
        # Below one token the bucket is in debt: calls waiting for tokens they reserved.
        wait = 0.0
        if state.tokens < 1.0:
            wait = _milliseconds_up((1.0 - state.tokens) / quota.requests_per_second)
            if wait > max_wait:
                raise RateLimited(over_rate_message(key_id, quota, wait), wait)
        state.tokens -= 1.0
        if kind is CallKind.UNARY:
            state.in_flight += 1
        else:
            state.streams += 1
        return state, wait

    def _state(self, tenant: str, key_id: str, now: float) -> _KeyState:
        """The key's state (made with a full bucket when the key is new here)."""
        state = self._keys.get(key_id)
        if state is None:
            if len(self._keys) >= self._prune_at:
                self._prune(now)
            quota = self._policy.quota_of(tenant)
            state = self._keys[key_id] = _KeyState(quota, float(quota.burst), now)
        return state

    def _prune(self, now: float) -> None:
        """Drop the states of keys with nothing open and a full bucket (as a new state has)."""
        for key_id, state in list(self._keys.items()):
            full_at = state.refilled_at + state.quota.burst / state.quota.requests_per_second
            if state.in_flight == 0 and state.streams == 0 and now >= full_at:
                del self._keys[key_id]
        self._prune_at = max(1024, 2 * len(self._keys))


class _Admitted:
    """``MemoryCallQuotas.admit``'s context manager: a class, not ``@asynccontextmanager``,
    whose generator and wrapper cost every call several microseconds more."""

    __slots__ = ("_args", "_kind", "_quotas", "_state")

    def __init__(
        self,
        quotas: MemoryCallQuotas,
        tenant: str,
        key_id: str,
        kind: CallKind,
        time_left: float | None,
    ) -> None:
        self._quotas = quotas
        self._args = (tenant, key_id, kind, time_left)
        self._kind = kind
        self._state: _KeyState | None = None

    async def __aenter__(self) -> None:
        self._state = await self._quotas._enter(*self._args)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._state is not None:
            _leave(self._state, self._kind)
            self._state = None


def _patience(time_left: float | None) -> float:
    """How long a call may wait for room: half its time left, at most MAX_WAIT_SECONDS."""
    if time_left is None:
        return MAX_WAIT_SECONDS
    return max(0.0, min(MAX_WAIT_SECONDS, time_left / 2))


def _leave(state: _KeyState, kind: CallKind) -> None:
    if kind is CallKind.UNARY:
        state.in_flight -= 1
    else:
        state.streams -= 1


def _check_room(state: _KeyState, key_id: str, kind: CallKind) -> None:
    """Raise ``RateLimited`` when the key has no room for another call of ``kind``."""
    quota = state.quota
    if kind is CallKind.UNARY and state.in_flight >= quota.max_in_flight:
        raise RateLimited(
            f"API key {key_id} has {quota.max_in_flight} calls in flight, its most;"
            " retry when one has finished",
            BUSY_RETRY_SECONDS,
            quota="in_flight",
        )
    if kind is CallKind.STREAM and state.streams >= quota.max_streams:
        raise RateLimited(
            f"API key {key_id} has {quota.max_streams} watch streams open, its most;"
            " retry when one has ended",
            BUSY_RETRY_SECONDS,
            quota="streams",
        )


def over_rate_message(key_id: str, quota: Quota, wait: float) -> str:
    return (
        f"API key {key_id} is over its rate limit of {quota.requests_per_second:g}"
        f" requests per second (burst {quota.burst}); retry in {wait:.3f}s"
    )


def _milliseconds_up(seconds: float) -> float:
    """``seconds`` rounded up to a whole millisecond (the retry delay a caller is told)."""
    return math.ceil(seconds * 1000 - 1e-6) / 1000  # the 1e-6: float noise is no millisecond
