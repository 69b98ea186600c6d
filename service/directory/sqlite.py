"""The wallet directory and API key store on SQLite: one connection, used from one worker thread."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from service.directory.base import (
    ApiKeyRecord,
    DueWebhookEvent,
    NewWebhookEvent,
    WalletCursor,
    WalletRow,
    WebhookConfig,
    WebhookConfigChange,
    WebhookEventRecord,
    new_wallet_id,
)
from service.directory.rules import existing_wallet_for
from service.directory.sqlite_schema import migrate, schema_version
from service.domain import Wallet, parse_customer_id, parse_tenant, parse_wallet_id
from service.errors import (
    AlreadyExists,
    CustomerNotFound,
    InvalidArgument,
    NotFound,
    WalletNotFound,
)
from service.watch.events import BlockRef, FollowerState

if TYPE_CHECKING:
    from service.directory.base import ApiKeyStore, WalletDirectory, WebhookStore

__all__ = ["SqliteWalletDirectory"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
Clock = Callable[[], datetime]

_SELECT = "SELECT wallet_id, tenant, customer_id, network, address, created_at FROM wallets"
_INSERT = (
    "INSERT INTO wallets (wallet_id, tenant, customer_id, network, address, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_SELECT_KEY = "SELECT key_id, tenant, created_at, revoked_at, digest FROM api_keys"
_BUSY_TIMEOUT_SECONDS = 10.0
_DIGEST_BYTES = 32


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqliteWalletDirectory:
    """``WalletDirectory``, ``ApiKeyStore`` and ``WebhookStore`` on one SQLite file
    (WAL, migrated at open).

    All SQLite calls run on a private single-thread executor, which both keeps
    them off the event loop and serialises use of the one connection (a
    cancelled caller cannot release it while a statement is still running).
    Every write is one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(
        self, connection: sqlite3.Connection, executor: ThreadPoolExecutor, clock: Clock
    ) -> None:
        """Use ``open``; this wraps an already-migrated connection owned by ``executor``."""
        self._connection = connection
        self._executor = executor
        self._clock = clock
        self._closed = False

    @classmethod
    async def open(cls, path: Path, *, clock: Clock = _utc_now) -> SqliteWalletDirectory:
        """Open (creating the file and its parent directories) and migrate ``path``."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wallet-directory")
        try:
            connection = await asyncio.get_running_loop().run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(connection, executor, clock)

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        parse_wallet_id(wallet_id)
        found = await self._run(_select_wallet, wallet_id)
        if found is None or found.tenant != tenant:
            raise WalletNotFound(wallet_id)
        return found

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        parse_customer_id(customer_id)
        wallets = await self._run(_select_customer_wallets, tenant, customer_id)
        if not wallets:
            raise CustomerNotFound(customer_id)
        return wallets

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        if not rows:
            return []
        now = self._clock().astimezone(UTC)
        wallets, created = await self._run(_import_rows, tenant, list(rows), now)
        _log.info("imported %d wallets for tenant %s (%d new)", len(wallets), tenant, created)
        return wallets

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        row = WalletRow(customer_id=customer_id, network=network, address=address)
        now = self._clock().astimezone(UTC)
        wallet, created = await self._run(_register_row, tenant, row, now)
        if created:
            _log.info("registered wallet %s for tenant %s", wallet.wallet_id, tenant)
        return wallet, created

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        parse_customer_id(customer_id)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return await self._run(_select_wallet_page, tenant, customer_id, after, limit)

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        parse_customer_id(customer_id)
        parse_wallet_id(wallet_id)
        deleted = await self._run(_delete_wallet, tenant, customer_id, wallet_id)
        if deleted is None:
            raise WalletNotFound(wallet_id)
        _log.info("deleted wallet %s of tenant %s", wallet_id, tenant)
        return deleted

    async def add_key(self, key_id: str, tenant: str, digest: bytes) -> ApiKeyRecord:
        parse_tenant(tenant)
        if len(digest) != _DIGEST_BYTES:
            raise ValueError(f"an API key digest is {_DIGEST_BYTES} bytes, not {len(digest)}")
        now = self._clock().astimezone(UTC)
        record = await self._run(_insert_key, key_id, tenant, bytes(digest), now)
        _log.info("added API key %s for tenant %s", key_id, tenant)
        return record

    async def key_by_id(self, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
        return await self._run(_select_key, key_id)

    async def revoke_key(self, key_id: str) -> ApiKeyRecord:
        now = self._clock().astimezone(UTC)
        record = await self._run(_revoke_key, key_id, now)
        _log.info("revoked API key %s of tenant %s", key_id, record.tenant)
        return record

    async def list_keys(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        return await self._run(_select_keys, tenant)

    async def load_follower_state(self, network: str) -> FollowerState | None:
        return await self._run(_select_follower_state, network)

    async def save_follower_state(self, state: FollowerState) -> None:
        await self._run(_write, _upsert_follower_state, state)

    async def webhook_config(self, tenant: str) -> WebhookConfig | None:
        return await self._run(_select_webhook_config, tenant)

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
        change = await self._run(
            _write, _save_webhook_config, tenant, url, events, new_secret, rotate_secret, now
        )
        if change.created:
            _log.info("created the webhook config of tenant %s", tenant)
        elif change.secret_changed:
            _log.info("rotated the webhook secret of tenant %s", tenant)
        return change

    async def webhook_subscribers(
        self, network: str, event_type: str, addresses: Collection[str] | None = None
    ) -> list[Wallet]:
        return await self._run(
            _select_webhook_subscribers,
            network,
            event_type,
            None if addresses is None else sorted(set(addresses)),
        )

    async def enqueue_webhook_events(self, events: Sequence[NewWebhookEvent]) -> int:
        if not events:
            return 0
        return await self._run(_write, _insert_webhook_events, list(events))

    async def due_webhook_events(
        self, now: datetime, limit: int, exclude_wallets: Collection[str] = ()
    ) -> list[DueWebhookEvent]:
        if limit < 1:
            return []
        return await self._run(_select_due_events, now, limit, sorted(exclude_wallets))

    async def next_webhook_attempt_at(
        self, exclude_wallets: Collection[str] = ()
    ) -> datetime | None:
        return await self._run(_select_next_attempt_at, sorted(exclude_wallets))

    async def mark_webhook_delivered(self, event_id: str, now: datetime) -> None:
        await self._run(
            _update_event,
            event_id,
            "status = 'delivered', attempts = attempts + 1, last_error = NULL, delivered_at = ?",
            (_timestamp(now),),
        )

    async def mark_webhook_retry(
        self, event_id: str, error: str, next_attempt_at: datetime
    ) -> None:
        await self._run(
            _update_event,
            event_id,
            "attempts = attempts + 1, last_error = ?, next_attempt_at = ?",
            (error, _timestamp(next_attempt_at)),
        )

    async def mark_webhook_failed(self, event_id: str, error: str) -> None:
        await self._run(
            _update_event,
            event_id,
            "status = 'failed', attempts = attempts + 1, last_error = ?",
            (error,),
        )

    async def requeue_webhook_events(
        self, tenant: str | None, since: datetime, now: datetime
    ) -> int:
        count = await self._run(_write, _requeue_events, tenant, since, now)
        _log.info(
            "requeued %d webhook events%s", count, "" if tenant is None else f" of tenant {tenant}"
        )
        return count

    async def webhook_events(self, tenant: str | None = None) -> list[WebhookEventRecord]:
        return await self._run(_select_webhook_events, tenant)

    async def schema_version(self) -> int:
        """The schema version of the open database (migrated at open)."""
        return await self._run(schema_version)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._connection.close)
        finally:
            await asyncio.to_thread(self._executor.shutdown)

    async def _run(
        self,
        function: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``function(connection, ...)`` on the connection's thread."""
        if self._closed:
            raise RuntimeError("wallet directory is closed")
        call = partial(function, self._connection, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=_BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            _log.warning("wallet directory %s: journal mode is %s, not WAL", path, mode)
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA synchronous = NORMAL")
        version = migrate(connection)
    except BaseException:
        connection.close()
        raise
    _log.info("wallet directory %s open at schema version %d", path, version)
    return connection


def _import_rows(
    connection: sqlite3.Connection, tenant: str, rows: list[WalletRow], now: datetime
) -> tuple[list[Wallet], int]:
    """Register ``rows`` in one ``BEGIN IMMEDIATE`` transaction: all or nothing."""
    return _write(connection, _insert_rows, tenant, rows, now)


def _write(
    connection: sqlite3.Connection,
    function: Callable[Concatenate[sqlite3.Connection, _P], _T],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Run ``function(connection, ...)`` in one ``BEGIN IMMEDIATE`` transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = function(connection, *args, **kwargs)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


def _register_row(
    connection: sqlite3.Connection, tenant: str, row: WalletRow, now: datetime
) -> tuple[Wallet, bool]:
    """Look up (tenant, network, address), insert it when absent: one write transaction.

    ``BEGIN IMMEDIATE`` takes the database's write lock before the look-up, so
    no other connection (in this process or another) can insert the same row
    between the look-up and the insert.
    """
    return _write(connection, _register_row_in_transaction, tenant, row, now)


def _register_row_in_transaction(
    connection: sqlite3.Connection, tenant: str, row: WalletRow, now: datetime
) -> tuple[Wallet, bool]:
    existing = _select_by_address(connection, tenant, row.network, row.address)
    if existing is not None:
        if existing.customer_id != row.customer_id:
            raise AlreadyExists(
                f"address {row.address} on network {row.network} is already registered"
                " to another customer"
            )
        return existing, False
    (wallet,), _ = _insert_rows(connection, tenant, [row], now)
    return wallet, True


def _select_wallet_page(
    connection: sqlite3.Connection,
    tenant: str,
    customer_id: str,
    after: WalletCursor | None,
    limit: int,
) -> list[Wallet]:
    query = _SELECT + " WHERE tenant = ? AND customer_id = ?"
    parameters: list[object] = [tenant, customer_id]
    if after is not None:
        query += " AND (created_at, wallet_id) > (?, ?)"
        parameters += [_timestamp(after.created_at), after.wallet_id]
    query += " ORDER BY created_at, wallet_id LIMIT ?"
    parameters.append(limit)
    return [_wallet(row) for row in connection.execute(query, parameters).fetchall()]


def _delete_wallet(
    connection: sqlite3.Connection, tenant: str, customer_id: str, wallet_id: str
) -> Wallet | None:
    """Delete the wallet if it is this tenant's customer's; return it as it was, else None.

    One statement in one ``BEGIN IMMEDIATE`` transaction; ``fetchall`` runs the
    ``RETURNING`` statement to completion before the commit.
    """
    rows = _write(
        connection,
        lambda c: c.execute(
            "DELETE FROM wallets WHERE wallet_id = ? AND tenant = ? AND customer_id = ?"
            " RETURNING wallet_id, tenant, customer_id, network, address, created_at",
            (wallet_id, tenant, customer_id),
        ).fetchall(),
    )
    return _wallet(rows[0]) if rows else None


def _insert_key(
    connection: sqlite3.Connection, key_id: str, tenant: str, digest: bytes, now: datetime
) -> ApiKeyRecord:
    try:
        connection.execute(
            "INSERT INTO api_keys (key_id, tenant, digest, created_at) VALUES (?, ?, ?, ?)",
            (key_id, tenant, digest, _timestamp(now)),
        )
    except sqlite3.IntegrityError:
        if _select_key(connection, key_id) is None:
            raise
        raise AlreadyExists(f"an API key with id {key_id} already exists") from None
    return ApiKeyRecord(key_id=key_id, tenant=tenant, created_at=_parsed(now), revoked_at=None)


def _select_key(connection: sqlite3.Connection, key_id: str) -> tuple[ApiKeyRecord, bytes] | None:
    row = connection.execute(_SELECT_KEY + " WHERE key_id = ?", (key_id,)).fetchone()
    return None if row is None else (_key_record(row), bytes(row[4]))


def _revoke_key(connection: sqlite3.Connection, key_id: str, now: datetime) -> ApiKeyRecord:
    """Set ``revoked_at`` unless already set (the first revocation's time stays)."""
    rows = _write(
        connection,
        lambda c: c.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE key_id = ?"
            " RETURNING key_id, tenant, created_at, revoked_at",
            (_timestamp(now), key_id),
        ).fetchall(),
    )
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
        created_at=_from_timestamp(created_at),
        revoked_at=None if revoked_at is None else _from_timestamp(revoked_at),
    )


def _insert_rows(
    connection: sqlite3.Connection, tenant: str, rows: list[WalletRow], now: datetime
) -> tuple[list[Wallet], int]:
    """Register ``rows`` inside the caller's transaction; return (wallets, how many new)."""
    wallets: list[Wallet] = []
    created = 0
    for number, row in enumerate(rows, start=1):
        by_id = _select_wallet(connection, row.wallet_id) if row.wallet_id else None
        by_address = _select_by_address(connection, tenant, row.network, row.address)
        existing = existing_wallet_for(row, number, tenant, by_id, by_address)
        if existing is not None:
            wallets.append(existing)
            continue
        wallet = Wallet(
            wallet_id=row.wallet_id or _unused_wallet_id(connection),
            tenant=tenant,
            customer_id=row.customer_id,
            network=row.network,
            address=row.address,
            created_at=now,
        )
        connection.execute(
            _INSERT,
            (
                wallet.wallet_id,
                tenant,
                wallet.customer_id,
                wallet.network,
                wallet.address,
                _timestamp(now),
            ),
        )
        wallets.append(wallet)
        created += 1
    return wallets, created


def _unused_wallet_id(connection: sqlite3.Connection) -> str:
    while True:
        wallet_id = new_wallet_id()
        if _select_wallet(connection, wallet_id) is None:
            return wallet_id


def _select_wallet(connection: sqlite3.Connection, wallet_id: str) -> Wallet | None:
    row = connection.execute(_SELECT + " WHERE wallet_id = ?", (wallet_id,)).fetchone()
    return None if row is None else _wallet(row)


def _select_by_address(
    connection: sqlite3.Connection, tenant: str, network: str, address: str
) -> Wallet | None:
    row = connection.execute(
        _SELECT + " WHERE tenant = ? AND network = ? AND address = ?",
        (tenant, network, address),
    ).fetchone()
    return None if row is None else _wallet(row)


def _select_customer_wallets(
    connection: sqlite3.Connection, tenant: str, customer_id: str
) -> list[Wallet]:
    rows = connection.execute(
        _SELECT + " WHERE tenant = ? AND customer_id = ? ORDER BY network, created_at, wallet_id",
        (tenant, customer_id),
    ).fetchall()
    return [_wallet(row) for row in rows]


def _wallet(row: tuple[Any, ...]) -> Wallet:
    wallet_id, tenant, customer_id, network, address, created_at = row
    return Wallet(
        wallet_id=wallet_id,
        tenant=tenant,
        customer_id=customer_id,
        network=network,
        address=address,
        created_at=_from_timestamp(created_at),
    )


# ---------------------------------------------------------------- webhooks

_SELECT_CONFIG = "SELECT tenant, url, events, secret, created_at, updated_at FROM webhook_configs"
_SELECT_EVENT = (
    "SELECT event_id, tenant, wallet_id, event_type, currency, block_number, block_hash,"
    " payload, created_at, status, attempts, next_attempt_at, last_error, delivered_at"
    " FROM webhook_outbox"
)
_MAX_IN_LIST = 500  # addresses per ``IN (...)`` list
# Pending events that are the earliest pending event of their wallet.
_PENDING_HEADS = (
    " FROM webhook_outbox o JOIN webhook_configs c ON c.tenant = o.tenant"
    " WHERE o.status = 'pending'"
    " AND NOT EXISTS (SELECT 1 FROM webhook_outbox e WHERE e.wallet_id = o.wallet_id"
    " AND e.status = 'pending' AND e.seq < o.seq)"
)


def _select_follower_state(connection: sqlite3.Connection, network: str) -> FollowerState | None:
    row = connection.execute(
        "SELECT block_number, block_hash, block_timestamp, balances FROM follower_state"
        " WHERE network = ?",
        (network,),
    ).fetchone()
    if row is None:
        return None
    balances = {
        address: {symbol: int(raw) for symbol, raw in amounts.items()}
        for address, amounts in json.loads(row[3]).items()
    }
    return FollowerState(BlockRef(network, row[0], row[1], row[2]), balances)


def _upsert_follower_state(connection: sqlite3.Connection, state: FollowerState) -> None:
    balances = {
        address: {symbol: str(raw) for symbol, raw in amounts.items()}
        for address, amounts in state.balances.items()
    }
    block = state.block
    connection.execute(
        "INSERT INTO follower_state (network, block_number, block_hash, block_timestamp, balances)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (network) DO UPDATE SET"
        " block_number = excluded.block_number, block_hash = excluded.block_hash,"
        " block_timestamp = excluded.block_timestamp, balances = excluded.balances",
        (block.network, block.number, block.hash, block.timestamp, json.dumps(balances)),
    )


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
    stamp = _timestamp(now)
    if existing is None:
        if url is None:
            raise InvalidArgument("url is required to create the webhook configuration")
        if not events:
            raise InvalidArgument("events are required to create the webhook configuration")
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
        return [_wallet(row) for row in rows.fetchall()]
    wallets: list[Wallet] = []
    for start in range(0, len(addresses), _MAX_IN_LIST):
        chunk = addresses[start : start + _MAX_IN_LIST]
        marks = ", ".join("?" * len(chunk))
        rows = connection.execute(
            query + f" AND w.address IN ({marks}) ORDER BY w.wallet_id",
            (network, event_type, *chunk),
        )
        wallets += [_wallet(row) for row in rows.fetchall()]
    return wallets


def _insert_webhook_events(connection: sqlite3.Connection, events: list[NewWebhookEvent]) -> int:
    """Inside the caller's ``BEGIN IMMEDIATE``: every event of one block at once."""
    inserted = 0
    for event in events:
        stamp = _timestamp(event.created_at)
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
        "SELECT o.event_id, o.tenant, o.wallet_id, o.payload, o.attempts, c.url, c.secret"
        + _PENDING_HEADS
        + " AND o.next_attempt_at <= ?"
        + _excluding(exclude_wallets)
        + " ORDER BY o.seq LIMIT ?",
        (_timestamp(now), *exclude_wallets, limit),
    ).fetchall()
    return [DueWebhookEvent(*row) for row in rows]


def _select_next_attempt_at(
    connection: sqlite3.Connection, exclude_wallets: list[str]
) -> datetime | None:
    (found,) = connection.execute(
        "SELECT MIN(o.next_attempt_at)" + _PENDING_HEADS + _excluding(exclude_wallets),
        exclude_wallets,
    ).fetchone()
    return None if found is None else _from_timestamp(found)


def _update_event(
    connection: sqlite3.Connection, event_id: str, assignments: str, values: tuple[object, ...]
) -> None:
    """Change a pending event (one statement: autocommit is its transaction)."""
    connection.execute(
        f"UPDATE webhook_outbox SET {assignments}"  # noqa: S608 (assignments are ours)
        " WHERE event_id = ? AND status = 'pending'",
        (*values, event_id),
    )


def _requeue_events(
    connection: sqlite3.Connection, tenant: str | None, since: datetime, now: datetime
) -> int:
    query = (
        "UPDATE webhook_outbox SET status = 'pending', attempts = 0, next_attempt_at = ?,"
        " last_error = NULL, delivered_at = NULL"
        " WHERE status IN ('delivered', 'failed') AND created_at >= ?"
    )
    parameters: list[object] = [_timestamp(now), _timestamp(since)]
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
        created_at=_from_timestamp(created_at),
        updated_at=_from_timestamp(updated_at),
    )


def _webhook_event(row: tuple[Any, ...]) -> WebhookEventRecord:
    (
        event_id,
        tenant,
        wallet_id,
        event_type,
        currency,
        block_number,
        block_hash,
        payload,
        created_at,
        status,
        attempts,
        next_attempt_at,
        last_error,
        delivered_at,
    ) = row
    return WebhookEventRecord(
        event_id=event_id,
        tenant=tenant,
        wallet_id=wallet_id,
        event_type=event_type,
        currency=currency,
        block_number=block_number,
        block_hash=block_hash,
        payload=payload,
        created_at=_from_timestamp(created_at),
        status=status,
        attempts=attempts,
        next_attempt_at=_from_timestamp(next_attempt_at),
        last_error=last_error,
        delivered_at=None if delivered_at is None else _from_timestamp(delivered_at),
    )


def _from_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _parsed(moment: datetime) -> datetime:
    """``moment`` as it reads back from the database (UTC, microseconds)."""
    return _from_timestamp(_timestamp(moment))


def _timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds and ``Z``: fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


if TYPE_CHECKING:

    def _implements(
        directory: SqliteWalletDirectory,
    ) -> tuple[WalletDirectory, ApiKeyStore, WebhookStore]:
        """Checked by mypy only: the class satisfies the three protocols."""
        return directory, directory, directory
