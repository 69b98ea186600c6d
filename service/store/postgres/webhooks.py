"""The ``WebhookStore`` port on PostgreSQL: webhook configs per tenant and the durable outbox.

Claims: ``claim_due_webhook_events`` picks the due events with ``SELECT … FOR
UPDATE SKIP LOCKED`` and stamps them with the claimer and its lease in the same
statement, so concurrent claimers (replicas) skip each other's rows instead of
waiting, and never get the same event.
"""

from __future__ import annotations

import logging
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
from service.store.postgres.database import PostgresDatabase
from service.store.postgres.wallets import wallet_from_row

if TYPE_CHECKING:
    from service.ports import Clock, WebhookStore

__all__ = ["PostgresWebhookStore"]

_log = logging.getLogger(__name__)

_SELECT_CONFIG = "SELECT tenant, url, events, secret, created_at, updated_at FROM webhook_configs"
_EVENT_COLUMNS = (
    "event_id, tenant, wallet_id, event_type, currency, block_number, block_hash,"
    " payload, created_at, status, attempts, next_attempt_at, last_error, delivered_at"
)
_EVENT_TIMES = (8, 11, 13)  # created_at, next_attempt_at, delivered_at (may be NULL)
# Pending events that are the earliest pending event of their wallet ($1: now).
_PENDING_HEADS = (
    " FROM webhook_outbox o JOIN webhook_configs c ON c.tenant = o.tenant"
    " WHERE o.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.wallet_id = o.wallet_id"
    " AND e.status = 'pending' AND e.seq < o.seq)"
)
# ... due now and not claimed by a live lease ($1: now; $2: wallets to leave out).
_DUE = (
    _PENDING_HEADS
    + " AND o.next_attempt_at <= $1"
    + " AND (o.claimed_until IS NULL OR o.claimed_until <= $1)"
    + " AND o.wallet_id <> ALL($2::text[])"
)
_DUE_COLUMNS = "o.event_id, o.tenant, o.wallet_id, o.payload, o.attempts, c.url, c.secret"
_RELEASE = "claimed_by = NULL, claimed_until = NULL"


class PostgresWebhookStore:
    """``WebhookStore`` on the shared ``PostgresDatabase`` (``webhook_configs``,
    ``webhook_outbox``; subscribers are read from ``wallets``)."""

    def __init__(self, database: PostgresDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def webhook_config(self, tenant: str) -> WebhookConfig | None:
        row = await self._database.fetchrow(_SELECT_CONFIG + " WHERE tenant = $1", tenant)
        return None if row is None else _webhook_config(row)

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
        # Read, then insert or update, with no other writer of this tenant's config between.
        async with self._database.transaction(f"balances.webhook_config.{tenant}") as connection:
            row = await connection.fetchrow(_SELECT_CONFIG + " WHERE tenant = $1", tenant)
            existing = None if row is None else _webhook_config(row)
            if existing is None:
                if url is None:
                    raise InvalidArgument(
                        "url is required to create the webhook configuration", field="url"
                    )
                if not events:
                    raise InvalidArgument(
                        "events are required to create the webhook configuration", field="events"
                    )
                row = await connection.fetchrow(
                    "INSERT INTO webhook_configs"
                    " (tenant, url, events, secret, created_at, updated_at)"
                    " VALUES ($1, $2, $3, $4, $5, $5)"
                    " RETURNING tenant, url, events, secret, created_at, updated_at",
                    tenant,
                    url,
                    list(events),
                    new_secret,
                    now,
                )
            else:
                row = await connection.fetchrow(
                    "UPDATE webhook_configs SET url = $1, events = $2, secret = $3,"
                    " updated_at = $4 WHERE tenant = $5"
                    " RETURNING tenant, url, events, secret, created_at, updated_at",
                    existing.url if url is None else url,
                    list(existing.events if events is None else events),
                    new_secret if rotate_secret else existing.secret,
                    now,
                    tenant,
                )
        created = existing is None
        change = WebhookConfigChange(
            _webhook_config(row), created=created, secret_changed=created or rotate_secret
        )
        if change.created:
            _log.info("created the webhook config of tenant %s", tenant)
        elif change.secret_changed:
            _log.info("rotated the webhook secret of tenant %s", tenant)
        return change

    async def webhook_subscribers(
        self, network: str, event_type: str, addresses: Collection[str] | None = None
    ) -> list[Wallet]:
        query = (
            "SELECT w.wallet_id, w.tenant, w.customer_id, w.network, w.address, w.created_at"
            " FROM wallets w JOIN webhook_configs c ON c.tenant = w.tenant"
            " WHERE w.network = $1 AND $2 = ANY(c.events)"
        )
        if addresses is None:
            rows = await self._database.fetch(query + " ORDER BY w.wallet_id", network, event_type)
        else:
            rows = await self._database.fetch(
                query + " AND w.address = ANY($3::text[]) ORDER BY w.wallet_id",
                network,
                event_type,
                sorted(set(addresses)),
            )
        return [wallet_from_row(row) for row in rows]

    async def enqueue_webhook_events(self, events: Sequence[NewWebhookEvent]) -> int:
        if not events:
            return 0
        # One statement (its own transaction); ``seq`` follows the order of ``events``.
        status = await self._database.execute(
            "INSERT INTO webhook_outbox (event_id, tenant, wallet_id, event_type, network,"
            " currency, block_number, block_hash, payload, created_at, status, attempts,"
            " next_attempt_at)"
            " SELECT e.event_id, e.tenant, e.wallet_id, e.event_type, e.network, e.currency,"
            " e.block_number, e.block_hash, e.payload, e.created_at, 'pending', 0, e.created_at"
            " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
            " $6::text[], $7::bigint[], $8::text[], $9::text[], $10::timestamptz[])"
            " WITH ORDINALITY AS e(event_id, tenant, wallet_id, event_type, network, currency,"
            " block_number, block_hash, payload, created_at, position)"
            " ORDER BY e.position ON CONFLICT DO NOTHING",
            *(
                [getattr(event, name) for event in events]
                for name in (
                    "event_id",
                    "tenant",
                    "wallet_id",
                    "event_type",
                    "network",
                    "currency",
                    "block_number",
                    "block_hash",
                    "payload",
                    "created_at",
                )
            ),
        )
        return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        if limit < 1:
            return []
        rows = await self._database.fetch(
            f"SELECT {_DUE_COLUMNS}" + _DUE + " ORDER BY o.seq LIMIT $3",
            now,
            sorted(exclude_wallets),
            limit,
        )
        return [DueWebhookEvent(*row) for row in rows]

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
        # SKIP LOCKED: a row another claimer is stamping right now is left to it.  A row
        # it stamped and committed since our snapshot is re-checked when locked (READ
        # COMMITTED re-evaluates the WHERE on the new version): its lease excludes it.
        rows = await self._database.fetch(
            "WITH due AS ("  # noqa: S608 - fixed column lists, values are parameters
            f" SELECT o.seq, {_DUE_COLUMNS}" + _DUE + " ORDER BY o.seq LIMIT $3"
            " FOR UPDATE OF o SKIP LOCKED)"
            " UPDATE webhook_outbox w SET claimed_by = $4, claimed_until = $5"
            " FROM due WHERE w.seq = due.seq"
            " RETURNING due.seq, due.event_id, due.tenant, due.wallet_id, due.payload,"
            " due.attempts, due.url, due.secret",
            now,
            sorted(exclude_wallets),
            limit,
            claimer,
            now + timedelta(seconds=lease_seconds),
        )
        return [DueWebhookEvent(*row[1:]) for row in sorted(rows, key=lambda row: row[0])]

    async def renew_webhook_claims(self, claimer: str, now: datetime, lease_seconds: float) -> int:
        status = await self._database.execute(
            "UPDATE webhook_outbox SET claimed_until = $1"
            " WHERE claimed_by = $2 AND status = 'pending'",
            now + timedelta(seconds=lease_seconds),
            claimer,
        )
        return int(status.rsplit(" ", 1)[1])

    async def release_webhook_claims(self, claimer: str) -> int:
        status = await self._database.execute(
            f"UPDATE webhook_outbox SET {_RELEASE} WHERE claimed_by = $1",  # noqa: S608 - ours
            claimer,
        )
        return int(status.rsplit(" ", 1)[1])

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        # A head claimed by someone else comes due again when its lease runs out, if ever.
        found = await self._database.fetchval(
            "SELECT MIN(GREATEST(o.next_attempt_at, o.claimed_until))"
            + _PENDING_HEADS
            + " AND o.wallet_id <> ALL($1::text[])",
            sorted(exclude_wallets),
        )
        return None if found is None else found.astimezone(UTC)

    async def mark_webhook_delivered(
        self, event_id: str, now: datetime, *, claimer: str | None = None
    ) -> bool:
        return await self._update_event(
            event_id,
            claimer,
            "status = 'delivered', attempts = attempts + 1, last_error = NULL, delivered_at = $3",
            now,
        )

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime, *, claimer: str | None = None
    ) -> bool:
        return await self._update_event(
            event_id,
            claimer,
            "attempts = attempts + 1, last_error = $3, next_attempt_at = $4",
            error,
            next_attempt_at,
        )

    async def mark_webhook_failed(
        self, event_id: str, error: str, *, claimer: str | None = None
    ) -> bool:
        return await self._update_event(
            event_id,
            claimer,
            "status = 'failed', attempts = attempts + 1, last_error = $3",
            error,
        )

    async def _update_event(
        self, event_id: str, claimer: str | None, assignments: str, *values: object
    ) -> bool:
        """Change a pending event and release its claim; with ``claimer``, only while it
        holds the claim ($2 NULL: whoever).  True when it applied."""
        status = await self._database.execute(
            f"UPDATE webhook_outbox SET {assignments}, {_RELEASE}"  # noqa: S608 (ours)
            " WHERE event_id = $1 AND status = 'pending'"
            " AND ($2::text IS NULL OR claimed_by = $2::text)",
            event_id,
            claimer,
            *values,
        )
        return status != "UPDATE 0"

    async def requeue_webhook_events(
        self, tenant: str | None, since: datetime, now: datetime
    ) -> int:
        status = await self._database.execute(
            "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = $1,"  # noqa: S608 - fixed column lists, values are parameters
            f" last_error = NULL, delivered_at = NULL, {_RELEASE}"
            " WHERE status IN ('delivered', 'failed') AND created_at >= $2"
            " AND ($3::text IS NULL OR tenant = $3::text)",
            now,
            since,
            tenant,
        )
        count = int(status.rsplit(" ", 1)[1])
        _log.info(
            "requeued %d webhook events%s", count, "" if tenant is None else f" of tenant {tenant}"
        )
        return count

    async def webhook_events(self, tenant: str | None = None) -> list[WebhookEventRecord]:
        query = f"SELECT {_EVENT_COLUMNS} FROM webhook_outbox"  # noqa: S608 - fixed column lists, values are parameters
        if tenant is None:
            rows = await self._database.fetch(query + " ORDER BY seq")
        else:
            rows = await self._database.fetch(query + " WHERE tenant = $1 ORDER BY seq", tenant)
        return [_webhook_event(row) for row in rows]

    async def webhook_backlog(self) -> tuple[int, datetime | None]:
        row = await self._database.fetchrow(
            "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest"
            " FROM webhook_outbox WHERE status = 'pending'"
        )
        oldest = row["oldest"]
        return row["pending"], None if oldest is None else oldest.astimezone(UTC)


def _webhook_config(row: Any) -> WebhookConfig:
    return WebhookConfig(
        tenant=row["tenant"],
        url=row["url"],
        events=tuple(row["events"]),
        secret=row["secret"],
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
    )


def _webhook_event(row: Any) -> WebhookEventRecord:
    """A record from a row of ``_EVENT_COLUMNS``, which are the record's fields in order."""
    values = list(row)
    for index in _EVENT_TIMES:
        if values[index] is not None:
            values[index] = values[index].astimezone(UTC)
    return WebhookEventRecord(*values)


if TYPE_CHECKING:
    _: type[WebhookStore] = PostgresWebhookStore  # checked by mypy: the class is the port
