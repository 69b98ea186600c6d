"""The stores on one SQLite file: one shared database, one module per port.

database.py        the connection, its thread, write transactions, migrate at open, timestamps
migrations.py      the schema, as steps versioned by ``PRAGMA user_version``
wallets.py         ``WalletDirectory``
api_keys.py        ``ApiKeyStore``
webhooks.py        ``WebhookStore`` (configs and the outbox)
follower_state.py  ``FollowerStateStore``

The wallet directory and the key store are served through the read-through
caches of ``service.store.cached``; ``PRAGMA data_version`` tells them when
another process wrote to the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from service.ports import Clock, utc_now
from service.store.cached import (
    DEFAULT_MAX_LAG_SECONDS,
    CachedApiKeyStore,
    CachedWalletDirectory,
    StoreChanges,
)
from service.store.sqlite.api_keys import SqliteApiKeyStore
from service.store.sqlite.database import SqliteDatabase
from service.store.sqlite.follower_state import SqliteFollowerStateStore
from service.store.sqlite.wallets import SqliteWalletStore
from service.store.sqlite.webhooks import SqliteWebhookStore

__all__ = [
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
    wallets: CachedWalletDirectory  # over a SqliteWalletStore
    api_keys: CachedApiKeyStore  # over a SqliteApiKeyStore
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


async def open_sqlite_stores(
    path: Path, *, clock: Clock = utc_now, max_lag: float = DEFAULT_MAX_LAG_SECONDS
) -> SqliteStores:
    """Open (creating the file and its parent directories) and migrate ``path``.

    Close with ``await stores.aclose()``, or ``async with await open_sqlite_stores(path)``.
    Raises ``SchemaTooNew`` when a newer version of the service wrote the file.
    ``max_lag``: seconds another process's write may go unseen by the caches.
    """
    database = await SqliteDatabase.open(path)
    changes = StoreChanges(database.data_version, max_lag=max_lag)
    return SqliteStores(
        database=database,
        wallets=CachedWalletDirectory(SqliteWalletStore(database, clock=clock), changes),
        api_keys=CachedApiKeyStore(SqliteApiKeyStore(database, clock=clock), changes),
        webhooks=SqliteWebhookStore(database, clock=clock),
        follower_state=SqliteFollowerStateStore(database),
    )
