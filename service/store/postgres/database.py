"""The shared PostgreSQL database: an asyncpg pool, transactions, the change counter.

The URL comes from settings without a password (``[directory] url``); the password
from the environment or a file.  Nothing here ever shows the URL: errors name
"the directory database", and ``where`` is the URL redacted (host, port, no user,
no database name).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from service.errors import StartupError
from service.redact import redact_url
from service.store.postgres.migrations import migrate, schema_version

__all__ = ["PostgresDatabase", "connection_problem"]

_log = logging.getLogger(__name__)

_CONNECT_TIMEOUT_SECONDS = 10.0
# No statement of ours runs long; one that hangs (a network partition) fails instead.
_COMMAND_TIMEOUT_SECONDS = 30.0
_POOL_MIN = 1
_POOL_MAX = 10
_COUNTER = "SELECT version FROM store_changes WHERE id = 1"

Connection = Any  # asyncpg.Connection (asyncpg ships no type information)


class PostgresDatabase:
    """One PostgreSQL database (migrated at open) shared by every PostgreSQL store.

    Statements run on a pool of connections; a multi-statement write is one
    transaction (``transaction``), READ COMMITTED, serialised against its
    competitors by a transaction-scoped advisory lock where SQLite relies on
    ``BEGIN IMMEDIATE``.
    """

    def __init__(self, pool: Any, where: str) -> None:
        """Use ``open``; this wraps an already-migrated pool."""
        self._pool = pool
        self.where = where  # the URL redacted: safe in messages
        self._closed = False
        # Bumps of the change counter made by this database's own committed writes: what
        # ``data_version`` leaves out, as SQLite's does for its own connection.
        self._own_changes = 0

    @classmethod
    async def open(
        cls, url: str, *, password: str | None = None, max_connections: int = _POOL_MAX
    ) -> PostgresDatabase:
        """Connect and migrate (under an advisory lock: replicas may start together).

        Raises ``StartupError`` naming "the directory database" (never the URL) when it
        cannot connect, and ``SchemaTooNew`` when a newer service migrated it.
        """
        where = redact_url(url)
        try:
            pool = await asyncpg.create_pool(
                dsn=url,
                password=password,
                min_size=min(_POOL_MIN, max_connections),
                max_size=max_connections,
                timeout=_CONNECT_TIMEOUT_SECONDS,
                command_timeout=_COMMAND_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            raise StartupError(
                f"cannot connect to the directory database at {where}: {connection_problem(exc)}"
            ) from None
        try:
            async with pool.acquire() as connection:
                found = await schema_version(connection)
                version = await migrate(connection, where)
                if version != found:
                    await connection.execute("ANALYZE")  # new tables and indexes
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, Exception) and not isinstance(exc, StartupError):
                raise StartupError(
                    f"cannot migrate the directory database at {where}: {connection_problem(exc)}"
                ) from None
            raise
        _log.info("directory database %s open at schema version %d", where, version)
        return cls(pool, where)

    async def fetch(self, query: str, *args: object) -> list[Any]:
        return list(await self._open_pool().fetch(query, *args))

    async def fetchrow(self, query: str, *args: object) -> Any:
        return await self._open_pool().fetchrow(query, *args)

    async def fetchval(self, query: str, *args: object) -> Any:
        return await self._open_pool().fetchval(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        """Run one statement (its own transaction); return its status (``UPDATE 1``)."""
        status: str = await self._open_pool().execute(query, *args)
        return status

    @asynccontextmanager
    async def transaction(self, *locks: str, changes: bool = False) -> AsyncIterator[Connection]:
        """A connection in one transaction, first holding the advisory locks named ``locks``
        (taken in sorted order; released at commit or rollback).

        ``changes``: the transaction writes wallets or API keys.  It then holds the change
        counter's row from the start, so the bumps between start and commit are its own,
        and ``data_version`` leaves them out once it committed.
        """
        async with self._open_pool().acquire() as connection:
            async with connection.transaction():
                for lock in sorted(set(locks)):
                    await connection.execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", lock
                    )
                before = await connection.fetchval(_COUNTER + " FOR UPDATE") if changes else 0
                yield connection
                bumps = await connection.fetchval(_COUNTER) - before if changes else 0
            self._own_changes += bumps  # committed: only now may they be left out

    async def schema_version(self) -> int:
        """The schema version of the open database (migrated at open)."""
        async with self._open_pool().acquire() as connection:
            return await schema_version(connection)

    async def data_version(self) -> int:
        """A number that moves whenever *another* writer (another replica, a ``balances``
        command) commits a change to the wallets or the API keys; this database's own
        writes (``transaction(changes=True)``) leave it alone, as SQLite's does.

        Triggers bump one counter row on every such statement, by anyone; the bumps of
        our own commits are subtracted.  They are counted after their commit, and read
        here before the counter: a write of ours committing meanwhile can only make the
        number move (a needless refresh), never hide another writer's change.
        """
        own = self._own_changes
        version: int = await self._open_pool().fetchval(_COUNTER)
        return version - own

    async def close(self) -> None:
        """Close the pool; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()

    def _open_pool(self) -> Any:
        """The pool; a closed database refuses use as SQLite's does (``RuntimeError``)."""
        if self._closed:
            raise RuntimeError("the directory database is closed")
        return self._pool


def connection_problem(exc: BaseException) -> str:
    """What went wrong, in words that hold no URL and no password."""
    if isinstance(exc, asyncpg.PostgresError):
        # Not the server's message: it may quote the user or database name from the URL.
        return f"{exc.__class__.__name__} (SQLSTATE {exc.sqlstate})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.__class__.__name__
