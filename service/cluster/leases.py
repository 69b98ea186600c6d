"""The ``Lease`` port's adapters: which process of the cluster leads a duty.

``PostgresLease``  ``pg_try_advisory_lock`` on a dedicated connection: the lock is
                   the session's, so it ends when that connection does (a killed
                   process releases it at once; a vanished host when TCP keepalives
                   give up, about ``lease_seconds``).  Replicas on one PostgreSQL.
``FileLease``      ``flock`` on a file beside the SQLite database: the processes of
                   ``balances serve --workers N`` on one machine; the kernel drops it
                   when the process dies.
``RedisLease``     ``SET NX PX`` with renewal and compare-and-delete: replicas that
                   share a Redis but no PostgreSQL.  It expires ``lease_seconds``
                   after the last renewal, so it is renewed every third of that.

Names look like ``balances:follower:polygon``.  Nothing logged names a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from service.ports import Lease

__all__ = [
    "FileLease",
    "PostgresLease",
    "RedisLease",
    "advisory_key",
    "lease_file",
    "postgres_connector",
]

log = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 5.0

# Opens the dedicated connection (an asyncpg.Connection: asyncpg ships no types).
Connect = Callable[[], Awaitable[Any]]


def postgres_connector(url: str, password: str | None, name: str, lease_seconds: float) -> Connect:
    """Opens a lease's own connection to ``url``; a leader's host that vanishes releases
    the lock once the server's TCP keepalives give up (about ``lease_seconds`` + 2 s)."""
    idle = max(int(lease_seconds), 1)

    async def connect() -> Any:
        return await asyncpg.connect(
            dsn=url,
            password=password,
            timeout=_CONNECT_TIMEOUT,
            server_settings={
                # Who leads, for a person (or a test) looking: join pg_locks with this.
                "application_name": f"balances pid {os.getpid()} {name}"[:63],
                "tcp_keepalives_idle": str(idle),
                "tcp_keepalives_interval": "1",
                "tcp_keepalives_count": "2",
            },
        )

    return connect


def advisory_key(name: str) -> int:
    """The signed 64-bit key of ``pg_try_advisory_lock`` for a lease name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lease_file(database: Path, name: str) -> Path:
    """The lock file of lease ``name`` beside the SQLite database ``database``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return database.with_name(f"{database.name}.{safe}.lock")


class _Lost:
    """Remembers the ``on_lost`` callback and logs a backend failure once per outage."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._callback: Callable[[], None] | None = None
        self._failing = False

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def lost(self) -> None:
        if self._callback is not None:
            self._callback()

    def failed(self, what: str, exc: BaseException) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "lease %s: %s failed (%s)", self.name, what, type(exc).__name__)
        self._failing = True

    def worked(self) -> None:
        self._failing = False


class PostgresLease:
    """A session advisory lock on a connection of its own (never a pooled one)."""

    def __init__(self, name: str, connect: Connect, *, timeout: float) -> None:
        self.name = name
        self._key = advisory_key(name)
        self._connect = connect
        self._timeout = timeout
        self._connection: Any = None
        self._held = False
        self._events = _Lost(name)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._events.on_lost(callback)

    async def keep(self) -> bool:
        try:
            connection: Any = self._connection
            if connection is not None and connection.is_closed():
                await self._drop()
                return False  # the session ended, and the lock with it: contend next time
            if connection is None:
                connection = await asyncio.wait_for(self._connect(), self._timeout)
                connection.add_termination_listener(self._terminated)
                self._connection = connection
            if self._held:
                # The lock lives as long as the session: a live session still holds it.
                await connection.fetchval("SELECT 1", timeout=self._timeout)
            else:
                self._held = bool(
                    await connection.fetchval(
                        "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._timeout
                    )
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._events.failed("PostgreSQL", exc)
            await self._drop()  # whatever the server thinks, we no longer lead
            return False
        self._events.worked()
        return self._held

    async def release(self) -> None:
        await self._drop()

    def _terminated(self, connection: Any) -> None:
        if connection is self._connection and self._held:
            self._events.lost()  # the next ``keep`` reports it

    async def _drop(self) -> None:
        """Close the session: the server releases the lock with it."""
        connection, self._connection, self._held = self._connection, None, False
        if connection is None or connection.is_closed():
            return
        connection.remove_termination_listener(self._terminated)
        try:
            await connection.close(timeout=self._timeout)
        except Exception:  # a broken connection: cut it
            connection.terminate()


class FileLease:
    """An exclusive ``flock`` on ``path``, held while this object keeps the file open."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self._path = path
        self._fd: int | None = None
        self._events = _Lost(name)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._events.on_lost(callback)  # a held flock is only lost with the file (keep sees it)

    async def keep(self) -> bool:
        try:
            if self._fd is not None:
                if self._same_file(self._fd):
                    return True
                log.warning("lease %s: its lock file was removed or replaced", self.name)
                self._close()
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            if not self._same_file(fd):  # replaced between open and flock: try next time
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who leads, for a person looking
            self._fd = fd
        except OSError as exc:
            self._events.failed("the lock file", exc)
            self._close()
            return False
        self._events.worked()
        return True

    async def release(self) -> None:
        self._close()

    def _same_file(self, fd: int) -> bool:
        try:
            return os.stat(self._path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock


# Renew or delete only while the key still holds our token (another may hold it now).
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"  # noqa: E501
_DELETE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"  # noqa: E501


class RedisLease:
    """A Redis key holding this process's random token, with an expiry renewed by ``keep``."""

    def __init__(
        self, name: str, client: aioredis.Redis, *, lease_seconds: float, timeout: float
    ) -> None:
        self.name = name
        self._client = client
        self._ms = max(int(lease_seconds * 1000), 1)
        self._timeout = timeout
        self._token = secrets.token_hex(16)
        self._held = False
        self._events = _Lost(name)

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._events.on_lost(callback)

    async def keep(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                if self._held:
                    renewed = await self._client.eval(_RENEW, 1, self.name, self._token, self._ms)
                    self._held = bool(renewed)
                    if not self._held:
                        log.warning("lease %s: expired before it was renewed", self.name)
                else:
                    taken = await self._client.set(self.name, self._token, nx=True, px=self._ms)
                    self._held = bool(taken)
        except (OSError, TimeoutError, RedisError) as exc:
            self._events.failed("Redis", exc)
            self._held = False  # it may still be ours for a while; nobody relies on that
            return False
        self._events.worked()
        return self._held

    async def release(self) -> None:
        if not self._held:
            return
        self._held = False
        with contextlib.suppress(OSError, TimeoutError, RedisError):
            async with asyncio.timeout(self._timeout):
                await self._client.eval(_DELETE, 1, self.name, self._token)


if TYPE_CHECKING:
    _pg: type[Lease] = PostgresLease  # checked by mypy: each class is the port
    _file: type[Lease] = FileLease
    _redis: type[Lease] = RedisLease
