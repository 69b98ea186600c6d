"""The shared SQLite database: one connection on one thread, write transactions, timestamps."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

from service.store.sqlite.migrations import migrate, schema_version

__all__ = [
    "SqliteDatabase",
    "as_stored",
    "from_timestamp",
    "in_transaction",
    "to_timestamp",
]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

_BUSY_TIMEOUT_SECONDS = 10.0
# Rows ANALYZE samples per index: statistics good enough for the planner, gathered in
# milliseconds on any size of table (SQLite's suggested range is 100-1000).
_ANALYSIS_LIMIT = 1000


class SqliteDatabase:
    """One SQLite file (WAL, migrated at open), shared by every SQLite store.

    All SQLite calls run on a private single-thread executor, which both keeps
    them off the event loop and serialises use of the one connection (a
    cancelled caller cannot release it while a statement is still running).
    Every multi-statement write is one ``BEGIN IMMEDIATE`` transaction (``write``).
    """

    def __init__(
        self, path: Path, connection: sqlite3.Connection, executor: ThreadPoolExecutor
    ) -> None:
        """Use ``open``; this wraps an already-migrated connection owned by ``executor``."""
        self.path = path
        self._connection = connection
        self._executor = executor
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        """Open (creating the file and its parent directories) and migrate ``path``.

        Raises ``SchemaTooNew`` when a newer version of the service wrote the file.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-database")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(path, connection, executor)

    async def run(
        self,
        function: Callable[Concatenate[sqlite3.Connection, _P], _T],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``function(connection, ...)`` on the connection's thread (autocommit)."""
        if self._closed:
            raise RuntimeError("the SQLite database is closed")
        call = partial(function, self._connection, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def write(
        self,
        function: Callable[Concatenate[sqlite3.Connection, _P], _T],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``function(connection, ...)`` in one ``BEGIN IMMEDIATE`` transaction."""
        return await self.run(in_transaction, function, *args, **kwargs)

    async def schema_version(self) -> int:
        """The schema version of the open database (migrated at open)."""
        return await self.run(schema_version)

    async def data_version(self) -> int:
        """A number that changes whenever *another* connection (another process, say)
        commits to the file; this connection's own commits leave it alone."""
        return await self.run(_data_version)

    async def analyze(self, table: str) -> None:
        """Refresh the planner's statistics of ``table`` (sampled: quick on any size)."""
        await self.run(_analyze, table)

    async def close(self) -> None:
        """Close the connection and stop its thread; closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, _optimize_and_close, self._connection
            )
        finally:
            await asyncio.to_thread(self._executor.shutdown)


def in_transaction(
    connection: sqlite3.Connection,
    function: Callable[Concatenate[sqlite3.Connection, _P], _T],
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Run ``function(connection, ...)`` in one ``BEGIN IMMEDIATE`` transaction.

    ``BEGIN IMMEDIATE`` takes the database's write lock at once, so no other
    connection (in this process or another) writes between a read and a write
    inside ``function``.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = function(connection, *args, **kwargs)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            _log.warning("database %s: journal mode is %s, not WAL", path, mode)
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute(f"PRAGMA analysis_limit = {_ANALYSIS_LIMIT}")
        found = schema_version(connection)
        version = migrate(connection)
        if version != found:
            connection.execute("ANALYZE")  # new indexes have no statistics yet
        # As SQLite's docs advise for long-lived connections: at open, analyze whatever
        # changed much since it was last analyzed (0x10000: every table; SQLite < 3.46
        # ignores that bit and looks only at tables this connection used).
        connection.execute("PRAGMA optimize = 0x10002")
    except BaseException:
        connection.close()
        raise
    _log.info("database %s open at schema version %d", path, version)
    return connection


def _data_version(connection: sqlite3.Connection) -> int:
    version: int = connection.execute("PRAGMA data_version").fetchone()[0]
    return version


def _analyze(connection: sqlite3.Connection, table: str) -> None:
    if not table.isidentifier():
        raise ValueError(f"not a table name: {table!r}")
    connection.execute(f"ANALYZE {table}")


def _optimize_and_close(connection: sqlite3.Connection) -> None:
    """``PRAGMA optimize`` before closing, as SQLite's docs advise; a busy or read-only
    file only skips it."""
    try:
        connection.execute("PRAGMA optimize")
    except sqlite3.Error as exc:
        _log.debug("PRAGMA optimize skipped at close: %s", exc)
    connection.close()


def to_timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds and ``Z``: fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_timestamp(text: str) -> datetime:
    """A stored timestamp as an aware UTC ``datetime``."""
    return datetime.fromisoformat(text).astimezone(UTC)


def as_stored(moment: datetime) -> datetime:
    """``moment`` as it reads back from the database (UTC, microseconds)."""
    return from_timestamp(to_timestamp(moment))
