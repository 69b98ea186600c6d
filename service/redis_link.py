"""One Redis connection pool shared by the snapshot cache and the rate limits, and its health.

Redis is an accelerator here, never a dependency of an answer: when a command
fails (server down, timeout, wrong password), the caller goes on without Redis
(``RedisSnapshotCache`` reads upstream, ``RedisCallQuotas`` counts in process)
and the link stays *down* for ``retry_after`` seconds, so a dead or
unreachable server costs one failed command per second, not one per request.
The outage is logged once when it starts and once when it ends.

The URL never reaches a log line or an error from here: redis-py's messages
name ``host:port`` only, and the settings reject a URL carrying a password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

__all__ = ["REDIS_ERRORS", "RedisLink", "open_redis_link"]

log = logging.getLogger(__name__)

# What a command may raise when Redis is unwell (OSError: a socket error redis-py let through).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
_COMMAND_TIMEOUT = 1.0  # seconds: a healthy Redis answers in well under a millisecond
_RETRY_AFTER = 1.0  # seconds without trying Redis after a failure


class RedisLink:
    """A ``redis.asyncio`` client and whether Redis is usable right now."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        retry_after: float = _RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self._retry_after = retry_after
        self._clock = clock
        self._down_until: float | None = None  # None: up

    @property
    def available(self) -> bool:
        """False for ``retry_after`` seconds after a failure: callers skip Redis meanwhile."""
        return self._down_until is None or self._clock() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        """A command failed: go without Redis for a while (logged once per outage)."""
        if self._down_until is None:
            log.warning(
                "Redis is unavailable (%s: %s); reading upstream and limiting in process"
                " until it answers",
                type(exc).__name__,
                exc,
            )
        self._down_until = self._clock() + self._retry_after

    def succeeded(self) -> None:
        """A command worked: Redis is up (logged when it was down)."""
        if self._down_until is not None:
            self._down_until = None
            log.warning("Redis answers again; the cache and rate limits are shared again")

    async def ping(self) -> bool:
        """Whether Redis answers now (start-up: a down Redis is logged, never fatal)."""
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.failed(exc)
            return False
        self.succeeded()
        return True

    async def aclose(self) -> None:
        await self.client.aclose()


def open_redis_link(url: str, password: str | None) -> RedisLink:
    """A link to ``url`` (``redis://``, ``rediss://`` or ``unix://``; no password in it),
    authenticating with ``password`` when given.  Connects lazily."""
    client = aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=_COMMAND_TIMEOUT,
        socket_connect_timeout=_COMMAND_TIMEOUT,
        # One retry on a fresh connection: a restarted server leaves pooled connections dead.
        retry=Retry(NoBackoff(), 1),
        client_name="balances",
    )
    return RedisLink(client)
