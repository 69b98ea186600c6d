"""The ``WebhookStore`` port on SQLite: webhook configs per tenant and the durable outbox."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from service.domain import Wallet, parse_tenant
from service.errors import InvalidArgument
from service.ports import utc_now
from service.records import (
    DueWebhookEvent,
    NewWebhookEvent,
    WebhookConfig,
    WebhookConfigChange,
    WebhookEventRecord,
)
from service.store.sqlite.database import (
    SqliteDatabase,
    from_timestamp,
    to_timestamp,
)
from service.store.sqlite.wallets import wallet_from_row

if TYPE_CHECKING:
    from service.ports import Clock, WebhookStore

__all__ = ["SqliteWebhookStore"]

_log = logging.getLogger(__name__)

_SELECT_CONFIG = "SELECT tenant, url, events, secret, created_at, updated_at FROM webhook_configs"
_SELECT_EVENT = (
    "SELECT event_id, tenant, wallet_id, event_type, currency, block_number, block_hash,"
    " payload, created_at, status, attempts, next_attempt_at, last_error, delivered_at"
    " FROM webhook_outbox"
)
_EVENT_TIMES = (8, 11, 13)  # created_at, next_attempt_at, delivered_at (may be NULL)
_MAX_IN_LIST = 500  # addresses per ``IN (...)`` list
# Pending events that are the earliest pending event of their wallet.
_PENDING_HEADS = (
    " FROM webhook_outbox o JOIN webhook_configs c ON c.tenant = o.tenant"
    " WHERE o.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.wallet_id = o.wallet_id"
    " AND e.status = 'pending' AND e.seq < o.seq)"
)
# ... and not claimed by a live lease (``?``: now).
_UNCLAIMED = " AND (o.claimed_until IS NULL OR o.claimed_until <= ?)"
_DUE_COLUMNS = "o.event_id, o.tenant, o.wallet_id, o.payload, o.attempts, c.url, c.secret"
# A mark applies to a pending event, with a claimer only while it holds the claim.
_RELEASE = "claimed_by = NULL, claimed_until = NULL"


class SqliteWebhookStore:
    """``WebhookStore`` on the shared ``SqliteDatabase`` (``webhook_configs``,
    ``webhook_outbox``; subscribers are read from ``wallets``)."""

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def webhook_config(self, tenant: str) -> WebhookConfig | None:
        return await self._database.run(_select_webhook_config, tenant)

    async def save_webhook_config(
        self,
        tenant: str,
        *,
        url: str | None,
        events: tuple[str, ...] | None,
        new_secret: str,
        rotate_secret: bool,
    ) -> WebhookConfigChange:
        parse_tenant(tenant)
        now = self._clock().astimezone(UTC)
        change = await self._database.write(
            _save_webhook_config, tenant, url, events, new_secret, rotate_secret, now
        )
        if change.created:
            _log.info("created the webhook config of tenant %s", tenant)
        elif change.secret_changed:
            _log.info("rotated the webhook secret of tenant %s", tenant)
        return change

    async def webhook_subscribers(
        self, network: str, event_type: str, addresses: Collection[str] | None = None
    ) -> list[Wallet]:
        return await self._database.run(
            _select_webhook_subscribers,
            network,
            event_type,
            None if addresses is None else sorted(set(addresses)),
        )

    async def enqueue_webhook_events(self, events: Sequence[NewWebhookEvent]) -> int:
        if not events:
            return 0
        return await self._database.write(_insert_webhook_events, list(events))

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        if limit < 1:
            return []
        return await self._database.run(_select_due_events, now, limit, sorted(exclude_wallets))

    async def claim_due_webhook_events(
        self,
        now: datetime,
        limit: int,
        claimer: str,
        lease_seconds: float,
        exclude_wallets: Collection[str] = (),
    ) -> list[DueWebhookEvent]:
        if limit < 1:
            return []
        until = now + timedelta(seconds=lease_seconds)
        # One BEGIN IMMEDIATE: no other claimer (process) reads between select and update.
        return await self._database.write(
            _claim_due_events, now, limit, claimer, until, sorted(exclude_wallets)
        )

    async def renew_webhook_claims(self, claimer: str, now: datetime, lease_seconds: float) -> int:
        until = to_timestamp(now + timedelta(seconds=lease_seconds))
        return await self._database.run(
            _execute,
            "UPDATE webhook_outbox SET claimed_until = ?"
            " WHERE claimed_by = ? AND status = 'pending'",
            (until, claimer),
        )

    async def release_webhook_claims(self, claimer: str) -> int:
        return await self._database.run(
            _execute,
            f"UPDATE webhook_outbox SET {_RELEASE} WHERE claimed_by = ?",  # noqa: S608 - ours
            (claimer,),
        )

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        return await self._database.run(_select_next_attempt_at, sorted(exclude_wallets))

    async def mark_webhook_delivered(
        self, event_id: str, now: datetime, *, claimer: str | None = None
    ) -> bool:
        return await self._database.run(
            _update_event,
            event_id,
            claimer,
            "status = 'delivered', attempts = attempts + 1, last_error = NULL, delivered_at = ?",
            (to_timestamp(now),),
        )

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime, *, claimer: str | None = None
    ) -> bool:
        return await self._database.run(
            _update_event,
            event_id,
            claimer,
            "attempts = attempts + 1, last_error = ?, next_attempt_at = ?",
            (error, to_timestamp(next_attempt_at)),
        )

    async def mark_webhook_failed(
        self, event_id: str, error: str, *, claimer: str | None = None
    ) -> bool:
        return await self._database.run(
            _update_event,
            event_id,
            claimer,
            "status = 'failed', attempts = attempts + 1, last_error = ?",
            (error,),
        )

    async def requeue_webhook_events(
        self, tenant: str | None, since: datetime, now: datetime
    ) -> int:
        count = await self._database.write(_requeue_events, tenant, since, now)
        _log.info(
            "requeued %d webhook events%s", count, "" if tenant is None else f" of tenant {tenant}"
        )
        return count

    async def webhook_events(self, tenant: str | None = None) -> list[WebhookEventRecord]:
        return await self._database.run(_select_webhook_events, tenant)

    async def webhook_backlog(self) -> tuple[int, datetime | None]:
        return await self._database.run(_select_backlog)


def _select_backlog(connection: sqlite3.Connection) -> tuple[int, datetime | None]:
    count, oldest = connection.execute(
        "SELECT COUNT(*), MIN(created_at) FROM webhook_outbox WHERE status = 'pending'"
    ).fetchone()
    return count, None if oldest is None else from_timestamp(oldest)


def _select_webhook_config(connection: sqlite3.Connection, tenant: str) -> WebhookConfig | None:
    row = connection.execute(_SELECT_CONFIG + " WHERE tenant = ?", (tenant,)).fetchone()
    return None if row is None else _webhook_config(row)


def _save_webhook_config(
    connection: sqlite3.Connection,
    tenant: str,
    url: str | None,
    events: tuple[str, ...] | None,
    new_secret: str,
    rotate_secret: bool,
    now: datetime,
) -> WebhookConfigChange:
    """Inside the caller's ``BEGIN IMMEDIATE``: read, then insert or update."""
    existing = _select_webhook_config(connection, tenant)
    stamp = to_timestamp(now)
    if existing is None:
        if url is None:
            raise InvalidArgument(
                "url is required to create the webhook configuration", field="url"
            )
        if not events:
            raise InvalidArgument(
                "events are required to create the webhook configuration", field="events"
            )
        connection.execute(
            "INSERT INTO webhook_configs (tenant, url, events, secret, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (tenant, url, json.dumps(list(events)), new_secret, stamp, stamp),
        )
        created = True
    else:
        connection.execute(
            "UPDATE webhook_configs SET url = ?, events = ?, secret = ?, updated_at = ?"
            " WHERE tenant = ?",
            (
                existing.url if url is None else url,
                json.dumps(list(existing.events if events is None else events)),
                new_secret if rotate_secret else existing.secret,
                stamp,
                tenant,
            ),
        )
        created = False
    config = _select_webhook_config(connection, tenant)
    assert config is not None
    return WebhookConfigChange(config, created=created, secret_changed=created or rotate_secret)


def _select_webhook_subscribers(
    connection: sqlite3.Connection, network: str, event_type: str, addresses: list[str] | None
) -> list[Wallet]:
    query = (
        "SELECT w.wallet_id, w.tenant, w.customer_id, w.network, w.address, w.created_at"
        " FROM wallets w JOIN webhook_configs c ON c.tenant = w.tenant"
        " WHERE w.network = ?"
        " AND EXISTS (SELECT 1 FROM json_each(c.events) WHERE json_each.value = ?)"
    )
    if addresses is None:
        rows = connection.execute(query + " ORDER BY w.wallet_id", (network, event_type))
        return [wallet_from_row(row) for row in rows.fetchall()]
    wallets: list[Wallet] = []
    for start in range(0, len(addresses), _MAX_IN_LIST):
        chunk = addresses[start : start + _MAX_IN_LIST]
        marks = ", ".join("?" * len(chunk))
        rows = connection.execute(
            query + f" AND w.address IN ({marks}) ORDER BY w.wallet_id",
            (network, event_type, *chunk),
        )
        wallets += [wallet_from_row(row) for row in rows.fetchall()]
    return wallets


def _insert_webhook_events(connection: sqlite3.Connection, events: list[NewWebhookEvent]) -> int:
    """Inside the caller's ``BEGIN IMMEDIATE``: every event of one block at once."""
    inserted = 0
    for event in events:
        stamp = to_timestamp(event.created_at)
        cursor = connection.execute(
            "INSERT OR IGNORE INTO webhook_outbox (event_id, tenant, wallet_id, event_type,"
            " network, currency, block_number, block_hash, payload, created_at, status,"
            " attempts, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?)",
            (
                event.event_id,
                event.tenant,
                event.wallet_id,
                event.event_type,
                event.network,
                event.currency,
                event.block_number,
                event.block_hash,
                event.payload,
                stamp,
                stamp,
            ),
        )
        inserted += cursor.rowcount
    return inserted


def _excluding(exclude_wallets: list[str]) -> str:
    if not exclude_wallets:
        return ""
    return f" AND o.wallet_id NOT IN ({', '.join('?' * len(exclude_wallets))})"


def _select_due_events(
    connection: sqlite3.Connection, now: datetime, limit: int, exclude_wallets: list[str]
) -> list[DueWebhookEvent]:
    rows = connection.execute(
        f"SELECT {_DUE_COLUMNS}"
        + _PENDING_HEADS
        + _UNCLAIMED
        + " AND o.next_attempt_at <= ?"
        + _excluding(exclude_wallets)
        + " ORDER BY o.seq LIMIT ?",
        (to_timestamp(now), to_timestamp(now), *exclude_wallets, limit),
    ).fetchall()
    return [DueWebhookEvent(*row) for row in rows]


def _claim_due_events(
    connection: sqlite3.Connection,
    now: datetime,
    limit: int,
    claimer: str,
    until: datetime,
    exclude_wallets: list[str],
) -> list[DueWebhookEvent]:
    """Inside the caller's ``BEGIN IMMEDIATE``: the due events, then claim them."""
    due = _select_due_events(connection, now, limit, exclude_wallets)
    connection.executemany(
        "UPDATE webhook_outbox SET claimed_by = ?, claimed_until = ? WHERE event_id = ?",
        [(claimer, to_timestamp(until), event.event_id) for event in due],
    )
    return due


def _select_next_attempt_at(
    connection: sqlite3.Connection, exclude_wallets: list[str]
) -> datetime | None:
    # A head claimed by someone else comes due again when its lease runs out, if ever.
    (found,) = connection.execute(
        "SELECT MIN(MAX(o.next_attempt_at, COALESCE(o.claimed_until, o.next_attempt_at)))"
        + _PENDING_HEADS
        + _excluding(exclude_wallets),
        exclude_wallets,
    ).fetchone()
    return None if found is None else from_timestamp(found)


def _execute(connection: sqlite3.Connection, query: str, parameters: tuple[object, ...]) -> int:
    """One statement (autocommit is its transaction); the rows it changed."""
    return connection.execute(query, parameters).rowcount


def _update_event(
    connection: sqlite3.Connection,
    event_id: str,
    claimer: str | None,
    assignments: str,
    values: tuple[object, ...],
) -> bool:
    """Change a pending event and release its claim (one statement: autocommit is its
    transaction); with ``claimer``, only while it holds the claim.  True when it applied."""
    query = (
        f"UPDATE webhook_outbox SET {assignments}, {_RELEASE}"  # noqa: S608 (ours)
        " WHERE event_id = ? AND status = 'pending'"
    )
    parameters: tuple[object, ...] = (*values, event_id)
    if claimer is not None:
        query += " AND claimed_by = ?"
        parameters += (claimer,)
    return connection.execute(query, parameters).rowcount > 0


def _requeue_events(
    connection: sqlite3.Connection, tenant: str | None, since: datetime, now: datetime
) -> int:
    query = (
        "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?,"  # noqa: S608 - fixed column lists, values are parameters
        f" last_error = NULL, delivered_at = NULL, {_RELEASE}"
        " WHERE status IN ('delivered', 'failed') AND created_at >= ?"
    )
    parameters: list[object] = [to_timestamp(now), to_timestamp(since)]
    if tenant is not None:
        query += " AND tenant = ?"
        parameters.append(tenant)
    return connection.execute(query, parameters).rowcount


def _select_webhook_events(
    connection: sqlite3.Connection, tenant: str | None
) -> list[WebhookEventRecord]:
    if tenant is None:
        rows = connection.execute(_SELECT_EVENT + " ORDER BY seq")
    else:
        rows = connection.execute(_SELECT_EVENT + " WHERE tenant = ? ORDER BY seq", (tenant,))
    return [_webhook_event(row) for row in rows.fetchall()]


def _webhook_config(row: tuple[Any, ...]) -> WebhookConfig:
    tenant, url, events, secret, created_at, updated_at = row
    return WebhookConfig(
        tenant=tenant,
        url=url,
        events=tuple(json.loads(events)),
        secret=secret,
        created_at=from_timestamp(created_at),
        updated_at=from_timestamp(updated_at),
    )


def _webhook_event(row: tuple[Any, ...]) -> WebhookEventRecord:
    """A record from a ``_SELECT_EVENT`` row, whose columns are the record's fields in order."""
    values = list(row)
    for index in _EVENT_TIMES:
        if values[index] is not None:
            values[index] = from_timestamp(values[index])
    return WebhookEventRecord(*values)


if TYPE_CHECKING:
    _: type[WebhookStore] = SqliteWebhookStore  # checked by mypy: the class is the port
