"""The stores on one SQLite file: one shared database, one module per port.

database.py        the connection, its thread, write transactions, migrate at open, timestamps
migrations.py      the schema, as steps versioned by ``PRAGMA user_version``
wallets.py         ``WalletDirectory``
api_keys.py        ``ApiKeyStore``
webhooks.py        ``WebhookStore`` (configs and the outbox)
follower_state.py  ``FollowerStateStore``
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from service.ports import Clock, utc_now
from service.store.sqlite.api_keys import SqliteApiKeyStore
from service.store.sqlite.database import SqliteDatabase
from service.store.sqlite.follower_state import SqliteFollowerStateStore
from service.store.sqlite.wallets import SqliteWalletStore
from service.store.sqlite.webhooks import SqliteWebhookStore

__all__ = [
    "OpeningStores",
    "SqliteApiKeyStore",
    "SqliteDatabase",
    "SqliteFollowerStateStore",
    "SqliteStores",
    "SqliteWalletStore",
    "SqliteWebhookStore",
    "open_sqlite_stores",
]


@dataclass(frozen=True)
class SqliteStores:
    """Every store on one ``SqliteDatabase``; ``aclose`` (or ``async with``) closes it."""

    database: SqliteDatabase
    wallets: SqliteWalletStore
    api_keys: SqliteApiKeyStore
    webhooks: SqliteWebhookStore
    follower_state: SqliteFollowerStateStore

    async def aclose(self) -> None:
        """Close the shared database (idempotent); no store may be used afterwards."""
        await self.database.close()

    async def __aenter__(self) -> SqliteStores:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


def open_sqlite_stores(path: Path, *, clock: Clock = utc_now) -> OpeningStores:
    """Open (creating the file and its parent directories) and migrate ``path``.

    Either ``stores = await open_sqlite_stores(path)`` (then ``await stores.aclose()``)
    or ``async with open_sqlite_stores(path) as stores:``.  Raises ``SchemaTooNew``
    when a newer version of the service wrote the file.
    """
    return OpeningStores(path, clock)


class OpeningStores:
    """What ``open_sqlite_stores`` returns: await it, or use it with ``async with``."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self._path = path
        self._clock = clock
        self._stores: SqliteStores | None = None

    def __await__(self) -> Generator[Any, None, SqliteStores]:
        return self._open().__await__()

    async def __aenter__(self) -> SqliteStores:
        self._stores = await self._open()
        return self._stores

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._stores is not None:
            await self._stores.aclose()

    async def _open(self) -> SqliteStores:
        database = await SqliteDatabase.open(self._path)
        return SqliteStores(
            database=database,
            wallets=SqliteWalletStore(database, clock=self._clock),
            api_keys=SqliteApiKeyStore(database, clock=self._clock),
            webhooks=SqliteWebhookStore(database, clock=self._clock),
            follower_state=SqliteFollowerStateStore(database),
        )
