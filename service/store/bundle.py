"""``Stores``: every store of one backend, the shape both backends open to.

Apart from ``service.store.stores`` (which chooses the backend from the settings) so
a backend package can build one without importing the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

from service.ports import FollowerStateStore, WebhookStore
from service.store.cached import CachedApiKeyStore, CachedWalletDirectory

__all__ = ["Backend", "StoreDatabase", "Stores"]

Backend = Literal["sqlite", "postgresql"]


class StoreDatabase(Protocol):
    """The database under the stores (``SqliteDatabase`` or ``PostgresDatabase``)."""

    async def schema_version(self) -> int:
        """The schema version (migrated at open); versions count per backend."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, kw_only=True)
class Stores:
    """Every store on one database; ``aclose`` (or ``async with``) closes it."""

    backend: Backend
    where: str  # the database, safe to print: the SQLite path or the URL redacted
    database: StoreDatabase
    wallets: CachedWalletDirectory
    api_keys: CachedApiKeyStore
    webhooks: WebhookStore
    follower_state: FollowerStateStore

    async def aclose(self) -> None:
        """Close the database (idempotent); no store may be used afterwards."""
        await self.database.close()

    async def __aenter__(self) -> Stores:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
