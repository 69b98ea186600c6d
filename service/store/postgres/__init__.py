"""The stores on one PostgreSQL database, for replicas: one shared pool, one module per port.

database.py        the asyncpg pool, transactions with advisory locks, migrate at open
migrations.py      the schema, as steps versioned by the ``schema_version`` table
wallets.py         ``WalletDirectory``
api_keys.py        ``ApiKeyStore``
webhooks.py        ``WebhookStore`` (configs and the outbox, with claims)
follower_state.py  ``FollowerStateStore``

The same behaviour as the SQLite stores (``service.store.sqlite``).  The wallet
directory and the key store are served through the read-through caches of
``service.store.cached``; the ``store_changes`` counter (bumped by triggers on
``wallets`` and ``api_keys``, read at most once per ``max_lag``) tells them when
anyone, on any replica, changed either table.
"""

from __future__ import annotations

from service.ports import Clock, utc_now
from service.store.bundle import Stores
from service.store.cached import (
    DEFAULT_MAX_LAG_SECONDS,
    CachedApiKeyStore,
    CachedWalletDirectory,
    StoreChanges,
)
from service.store.postgres.api_keys import PostgresApiKeyStore
from service.store.postgres.database import PostgresDatabase
from service.store.postgres.follower_state import PostgresFollowerStateStore
from service.store.postgres.wallets import PostgresWalletStore
from service.store.postgres.webhooks import PostgresWebhookStore

__all__ = [
    "PostgresApiKeyStore",
    "PostgresDatabase",
    "PostgresFollowerStateStore",
    "PostgresWalletStore",
    "PostgresWebhookStore",
    "open_postgres_stores",
]


async def open_postgres_stores(
    url: str,
    *,
    password: str | None = None,
    clock: Clock = utc_now,
    max_lag: float = DEFAULT_MAX_LAG_SECONDS,
) -> Stores:
    """Connect to ``url`` (no password in it: ``password``) and migrate the database.

    Close with ``await stores.aclose()``.  Raises ``StartupError`` naming "the directory
    database" (never the URL) when it cannot connect, ``SchemaTooNew`` when a newer
    version of the service migrated it.  ``max_lag``: seconds a change made by another
    replica may go unseen by this one's caches.
    """
    database = await PostgresDatabase.open(url, password=password)
    changes = StoreChanges(database.data_version, max_lag=max_lag)
    return Stores(
        backend="postgresql",
        where=database.where,
        database=database,
        wallets=CachedWalletDirectory(PostgresWalletStore(database, clock=clock), changes),
        api_keys=CachedApiKeyStore(PostgresApiKeyStore(database, clock=clock), changes),
        webhooks=PostgresWebhookStore(database, clock=clock),
        follower_state=PostgresFollowerStateStore(database),
    )
