"""The ``ApiKeyStore`` port on PostgreSQL: API key digests per tenant."""

from __future__ import annotations

import logging
from datetime import UTC
from typing import TYPE_CHECKING, Any

import asyncpg

from service.domain import parse_tenant
from service.errors import AlreadyExists, NotFound
from service.ports import utc_now
from service.records import ApiKeyRecord
from service.store.postgres.database import PostgresDatabase

if TYPE_CHECKING:
    from service.ports import ApiKeyStore, Clock

__all__ = ["PostgresApiKeyStore"]

_log = logging.getLogger(__name__)

_RECORD = "key_id, tenant, created_at, revoked_at"
_SELECT_KEY = f"SELECT {_RECORD}, digest FROM api_keys"  # noqa: S608 - fixed column lists, values are parameters
_DIGEST_BYTES = 32


class PostgresApiKeyStore:
    """``ApiKeyStore`` on the shared ``PostgresDatabase`` (the ``api_keys`` table)."""

    def __init__(self, database: PostgresDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        parse_tenant(tenant)
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"an API key digest is {_DIGEST_BYTES} bytes, not {len(digest)}")
        now = self._clock().astimezone(UTC)
        try:
            async with self._database.transaction(changes=True) as connection:
                row = await connection.fetchrow(
                    "INSERT INTO api_keys (key_id, tenant, digest, created_at)"  # noqa: S608 - fixed column lists, values are parameters
                    f" VALUES ($1, $2, $3, $4) RETURNING {_RECORD}",
                    key_id,
                    tenant,
                    bytes(digest),
                    now,
                )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists(f"an API key with id {key_id} already exists") from None
        _log.info("added API key %s for tenant %s", key_id, tenant)
        return _key_record(row)

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        row = await self._database.fetchrow(_SELECT_KEY + " WHERE key_id = $1", key_id)
        return None if row is None else (_key_record(row), bytes(row["digest"]))

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        """Set ``revoked_at`` unless already set (the first revocation's time stays)."""
        now = self._clock().astimezone(UTC)
        async with self._database.transaction(changes=True) as connection:
            row = await connection.fetchrow(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE key_id = $2"  # noqa: S608 - fixed column lists, values are parameters
                f" RETURNING {_RECORD}",
                now,
                key_id,
            )
        if row is None:
            raise NotFound(f"API key {key_id} not found")
        record = _key_record(row)
        _log.info("revoked API key %s of tenant %s", key_id, record.tenant)
        return record

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        if tenant is None:
            rows = await self._database.fetch(_SELECT_KEY + " ORDER BY tenant, created_at, key_id")
        else:
            rows = await self._database.fetch(
                _SELECT_KEY + " WHERE tenant = $1 ORDER BY created_at, key_id", tenant
            )
        return [_key_record(row) for row in rows]


def _key_record(row: Any) -> ApiKeyRecord:
    revoked_at = row["revoked_at"]
    return ApiKeyRecord(
        key_id=row["key_id"],
        tenant=row["tenant"],
        created_at=row["created_at"].astimezone(UTC),
        revoked_at=None if revoked_at is None else revoked_at.astimezone(UTC),
    )


if TYPE_CHECKING:
    _: type[ApiKeyStore] = PostgresApiKeyStore  # checked by mypy: the class is the port
