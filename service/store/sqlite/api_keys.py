"""The ``ApiKeyStore`` port on SQLite: API key digests per tenant."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC
from typing import TYPE_CHECKING, Any

from service.domain import parse_tenant
from service.errors import AlreadyExists, NotFound
from service.ports import utc_now
from service.records import ApiKeyRecord
from service.store.sqlite.database import (
    SqliteDatabase,
    as_stored,
    from_timestamp,
    to_timestamp,
)

if TYPE_CHECKING:
    from datetime import datetime

    from service.ports import ApiKeyStore, Clock

__all__ = ["SqliteApiKeyStore"]

_log = logging.getLogger(__name__)

_SELECT_KEY = "SELECT key_id, tenant, created_at, revoked_at, digest FROM api_keys"
_DIGEST_BYTES = 32


class SqliteApiKeyStore:
    """``ApiKeyStore`` on the shared ``SqliteDatabase`` (the ``api_keys`` table)."""

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        parse_tenant(tenant)
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"an API key digest is {_DIGEST_BYTES} bytes, not {len(digest)}")
        now = self._clock().astimezone(UTC)
        record = await self._database.run(_insert_key, key_id, tenant, bytes(digest), now)
        _log.info("added API key %s for tenant %s", key_id, tenant)
        return record

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        return await self._database.run(_select_key, key_id)

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        now = self._clock().astimezone(UTC)
        record = await self._database.write(_revoke_key, key_id, now)
        _log.info("revoked API key %s of tenant %s", key_id, record.tenant)
        return record

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return await self._database.run(_select_keys, tenant)


def _insert_key(
    connection: sqlite3.Connection, key_id: str, tenant: str, digest: bytes, now: datetime
) -> ApiKeyRecord:
    """One statement (autocommit is its transaction)."""
    try:
        connection.execute(
            "INSERT INTO api_keys (key_id, tenant, digest, created_at) VALUES (?, ?, ?, ?)",
            (key_id, tenant, digest, to_timestamp(now)),
        )
    except sqlite3.IntegrityError:
        if _select_key(connection, key_id) is None:
            raise
        raise AlreadyExists(f"an API key with id {key_id} already exists") from None
    return ApiKeyRecord(key_id=key_id, tenant=tenant, created_at=as_stored(now), revoked_at=None)


def _select_key(connection: sqlite3.Connection, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
    row = connection.execute(_SELECT_KEY + " WHERE key_id = ?", (key_id,)).fetchone()
    return None if row is None else (_key_record(row), bytes(row[4]))


def _revoke_key(connection: sqlite3.Connection, key_id: str, now: datetime) -> ApiKeyRecord:
    """Set ``revoked_at`` unless already set (the first revocation's time stays).

    Inside the caller's ``BEGIN IMMEDIATE``; ``fetchall`` runs the ``RETURNING``
    statement to completion before the commit.
    """
    rows = connection.execute(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?"
        " RETURNING key_id, tenant, created_at, revoked_at",
        (to_timestamp(now), key_id),
    ).fetchall()
    if not rows:
        raise NotFound(f"API key {key_id} not found")
    return _key_record(rows[0])


def _select_keys(connection: sqlite3.Connection, tenant: str | None) -> list[ApiKeyRecord]:
    if tenant is None:
        rows = connection.execute(_SELECT_KEY + " ORDER BY tenant, created_at, key_id")
    else:
        rows = connection.execute(
            _SELECT_KEY + " WHERE tenant = ? ORDER BY created_at, key_id", (tenant,)
        )
    return [_key_record(row) for row in rows.fetchall()]


def _key_record(row: tuple[Any, ...]) -> ApiKeyRecord:
    key_id, tenant, created_at, revoked_at = row[:4]
    return ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        created_at=from_timestamp(created_at),
        revoked_at=None if revoked_at is None else from_timestamp(revoked_at),
    )


if TYPE_CHECKING:
    _: type[ApiKeyStore] = SqliteApiKeyStore  # checked by mypy: the class is the port
