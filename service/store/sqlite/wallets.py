"""The ``WalletDirectory`` port on SQLite: registered wallets, scoped by tenant."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import AddressTaken, CustomerNotFound, WalletNotFound
from service.ports import utc_now
from service.records import WalletCursor, WalletRow, new_wallet_id
from service.store.rules import existing_wallet_for
from service.store.sqlite.database import (
    SqliteDatabase,
    from_timestamp,
    to_timestamp,
)

if TYPE_CHECKING:
    from datetime import datetime

    from service.ports import Clock, WalletDirectory

__all__ = ["CUSTOMER_WALLETS", "SqliteWalletStore", "wallet_from_row"]

_log = logging.getLogger(__name__)

_SELECT = "SELECT wallet_id, tenant, customer_id, network, address, created_at FROM wallets"
# Served by the index wallets_by_customer alone: one range, already in this order.
CUSTOMER_WALLETS = (
    _SELECT + " WHERE tenant = ? AND customer_id = ? ORDER BY network, created_at, wallet_id"
)
# An import that adds this many wallets refreshes the planner's statistics of the table.
_ANALYZE_AFTER_ROWS = 1000
_INSERT = (
    "INSERT INTO wallets (wallet_id, tenant, customer_id, network, address, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


class SqliteWalletStore:
    """``WalletDirectory`` on the shared ``SqliteDatabase`` (the ``wallets`` table)."""

    def __init__(self, database: SqliteDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        parse_wallet_id(wallet_id)
        found = await self._database.run(_select_wallet, wallet_id)
        if found is None or found.tenant != tenant:
            raise WalletNotFound(wallet_id)
        return found

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        parse_customer_id(customer_id)
        wallets = await self._database.run(_select_customer_wallets, tenant, customer_id)
        if not wallets:
            raise CustomerNotFound(customer_id)
        return wallets

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        if not rows:
            return []
        now = self._clock().astimezone(UTC)
        # One BEGIN IMMEDIATE transaction: all or nothing.
        wallets, created = await self._database.write(_insert_rows, tenant, list(rows), now)
        _log.info("imported %d wallets for tenant %s (%d new)", len(wallets), tenant, created)
        if created >= _ANALYZE_AFTER_ROWS:
            await self._database.analyze("wallets")
        return wallets

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        row = WalletRow(customer_id=customer_id, network=network, address=address)
        now = self._clock().astimezone(UTC)
        wallet, created = await self._database.write(_register_row, tenant, row, now)
        if created:
            _log.info("registered wallet %s for tenant %s", wallet.wallet_id, tenant)
        return wallet, created

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        parse_customer_id(customer_id)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return await self._database.run(_select_wallet_page, tenant, customer_id, after, limit)

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        parse_customer_id(customer_id)
        parse_wallet_id(wallet_id)
        deleted = await self._database.write(_delete_wallet, tenant, customer_id, wallet_id)
        if deleted is None:
            raise WalletNotFound(wallet_id)
        _log.info("deleted wallet %s of tenant %s", wallet_id, tenant)
        return deleted


def _register_row(
    connection: sqlite3.Connection, tenant: str, row: WalletRow, now: datetime
) -> tuple[Wallet, bool]:
    """Inside the caller's ``BEGIN IMMEDIATE``: look up (tenant, network, address), insert
    it when absent.

    The write lock is taken before the look-up, so no other connection (in this
    process or another) can insert the same row between the look-up and the insert.
    """
    existing = _select_by_address(connection, tenant, row.network, row.address)
    if existing is not None:
        if existing.customer_id != row.customer_id:
            raise AddressTaken(row.network, row.address)
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
        parameters += [to_timestamp(after.created_at), after.wallet_id]
    query += " ORDER BY created_at, wallet_id LIMIT ?"
    parameters.append(limit)
    return [wallet_from_row(row) for row in connection.execute(query, parameters).fetchall()]


def _delete_wallet(
    connection: sqlite3.Connection, tenant: str, customer_id: str, wallet_id: str
) -> Wallet | None:
    """Delete the wallet if it is this tenant's customer's; return it as it was, else None.

    One statement inside the caller's ``BEGIN IMMEDIATE``; ``fetchall`` runs the
    ``RETURNING`` statement to completion before the commit.
    """
    rows = connection.execute(
        "DELETE FROM wallets WHERE wallet_id = ? AND tenant = ? AND customer_id = ?"
        " RETURNING wallet_id, tenant, customer_id, network, address, created_at",
        (wallet_id, tenant, customer_id),
    ).fetchall()
    return wallet_from_row(rows[0]) if rows else None


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
                to_timestamp(now),
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
    return None if row is None else wallet_from_row(row)


def _select_by_address(
    connection: sqlite3.Connection, tenant: str, network: str, address: str
) -> Wallet | None:
    row = connection.execute(
        _SELECT + " WHERE tenant = ? AND network = ? AND address = ?",
        (tenant, network, address),
    ).fetchone()
    return None if row is None else wallet_from_row(row)


def _select_customer_wallets(
    connection: sqlite3.Connection, tenant: str, customer_id: str
) -> list[Wallet]:
    rows = connection.execute(CUSTOMER_WALLETS, (tenant, customer_id)).fetchall()
    return [wallet_from_row(row) for row in rows]


def wallet_from_row(row: tuple[Any, ...]) -> Wallet:
    """A ``Wallet`` from (wallet_id, tenant, customer_id, network, address, created_at)."""
    wallet_id, tenant, customer_id, network, address, created_at = row
    return Wallet(
        wallet_id=wallet_id,
        tenant=tenant,
        customer_id=customer_id,
        network=network,
        address=address,
        created_at=from_timestamp(created_at),
    )


if TYPE_CHECKING:
    _: type[WalletDirectory] = SqliteWalletStore  # checked by mypy: the class is the port
