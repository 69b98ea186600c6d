"""The store tests' two backends: the same tests against SQLite and PostgreSQL.

A test module parametrizes a fixture over ``BACKENDS`` and builds a
``StoreBackend`` with ``store_backend(request, tmp_path)``; the PostgreSQL one
takes a fresh database from the ``postgres_url`` fixture (a throwaway server,
see tests/support/databases.py), the SQLite one a file under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from service.ports import ApiKeyStore, Clock, WalletDirectory, utc_now
from service.store.cached import DEFAULT_MAX_LAG_SECONDS
from service.store.postgres import PostgresApiKeyStore, PostgresDatabase, PostgresWalletStore
from service.store.sqlite import SqliteApiKeyStore, SqliteDatabase, SqliteWalletStore
from service.store.stores import Stores, open_stores_at

__all__ = ["BACKENDS", "StoreBackend", "store_backend", "uncached_stores"]

# Also the test ids: test_x[sqlite], test_x[postgresql].
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class StoreBackend:
    """One database of one backend; ``open`` gives a new bundle of stores on it."""

    name: str  # "sqlite" or "postgresql"
    path: Path  # the SQLite file (unused for PostgreSQL)
    url: str | None  # the PostgreSQL database

    async def open(
        self, *, clock: Clock = utc_now, max_lag: float = DEFAULT_MAX_LAG_SECONDS
    ) -> Stores:
        return await open_stores_at(self.path, self.url, clock=clock, max_lag=max_lag)

    async def count(self, table: str) -> int:
        """Rows in ``table``, read outside the stores."""
        return int(await self.fetchval(f"SELECT COUNT(*) FROM {table}"))

    async def fetchval(self, query: str) -> Any:
        """The first column of the first row of ``query``, on a connection of its own."""
        if self.url is None:
            return await asyncio.to_thread(_sqlite_value, self.path, query)
        connection = await asyncpg.connect(self.url)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    async def fetch(self, query: str) -> list[tuple[Any, ...]]:
        """Every row of ``query``, on a connection of its own (SQLite: after a checkpoint,
        so the file itself holds every commit)."""
        if self.url is None:
            return await asyncio.to_thread(_sqlite_rows, self.path, query)
        connection = await asyncpg.connect(self.url)
        try:
            return [tuple(row) for row in await connection.fetch(query)]
        finally:
            await connection.close()


def store_backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """The backend named by ``request.param``."""
    name = request.param
    url = request.getfixturevalue("postgres_url") if name == "postgresql" else None
    return StoreBackend(name, tmp_path / "stores.sqlite3", url)


def uncached_stores(stores: Stores) -> tuple[ApiKeyStore, WalletDirectory]:
    """The key store and wallet directory on ``stores``' database, without the caches."""
    if isinstance(stores.database, SqliteDatabase):
        return SqliteApiKeyStore(stores.database), SqliteWalletStore(stores.database)
    assert isinstance(stores.database, PostgresDatabase)
    return PostgresApiKeyStore(stores.database), PostgresWalletStore(stores.database)


def _sqlite_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return list(connection.execute(query).fetchall())


def _sqlite_value(path: Path, query: str) -> Any:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(query).fetchone()[0]
