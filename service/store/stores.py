"""Every store of one backend, chosen by the settings: ``open_stores(settings)``.

``[directory] url`` set: PostgreSQL (``service.store.postgres``), for replicas.
Absent: the SQLite file at ``[directory] path`` (``service.store.sqlite``), the
embedded default.  Both give a ``Stores`` of the same shape and behaviour.
"""

from __future__ import annotations

from pathlib import Path

from service.ports import Clock, utc_now
from service.redact import redact_url
from service.settings import Settings
from service.store.bundle import Backend, StoreDatabase, Stores
from service.store.cached import DEFAULT_MAX_LAG_SECONDS

__all__ = [
    "Backend",
    "StoreDatabase",
    "Stores",
    "directory_name",
    "open_stores",
    "open_stores_at",
]


def directory_name(settings: Settings) -> str:
    """The configured database as it may be printed (a URL is redacted)."""
    if settings.directory_url is not None:
        return redact_url(settings.directory_url)
    return str(settings.directory_path)


async def open_stores(
    settings: Settings, *, clock: Clock = utc_now, max_lag: float = DEFAULT_MAX_LAG_SECONDS
) -> Stores:
    """Open (and migrate) the configured database: PostgreSQL at ``directory_url`` when
    set, else the SQLite file at ``directory_path``.

    Raises ``StartupError`` (naming the database safely) when it cannot be opened and
    ``SchemaTooNew`` when a newer version of the service migrated it.
    """
    return await open_stores_at(
        settings.directory_path,
        settings.directory_url,
        password=settings.directory_password,
        clock=clock,
        max_lag=max_lag,
    )


async def open_stores_at(
    path: Path,
    url: str | None,
    *,
    password: str | None = None,
    clock: Clock = utc_now,
    max_lag: float = DEFAULT_MAX_LAG_SECONDS,
) -> Stores:
    """``open_stores`` without settings: PostgreSQL at ``url`` when given, else SQLite at
    ``path``."""
    if url is not None:
        # Imported here: an embedded (SQLite) server never loads the PostgreSQL driver.
        from service.store.postgres import open_postgres_stores

        return await open_postgres_stores(url, password=password, clock=clock, max_lag=max_lag)
    from service.store.sqlite import open_sqlite_stores

    sqlite = await open_sqlite_stores(path, clock=clock, max_lag=max_lag)
    return Stores(
        backend="sqlite",
        where=str(path),
        database=sqlite.database,
        wallets=sqlite.wallets,
        api_keys=sqlite.api_keys,
        webhooks=sqlite.webhooks,
        follower_state=sqlite.follower_state,
    )
