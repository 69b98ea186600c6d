"""The ``WalletDirectory`` port on PostgreSQL: registered wallets, scoped by tenant."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC
from typing import TYPE_CHECKING, Any

from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import AddressTaken, CustomerNotFound, WalletNotFound
from service.ports import utc_now
from service.records import WalletCursor, WalletRow, new_wallet_id
from service.store.postgres.database import Connection, PostgresDatabase
from service.store.rules import existing_wallet_for

if TYPE_CHECKING:
    from datetime import datetime

    from service.ports import Clock, WalletDirectory

__all__ = ["CUSTOMER_WALLETS", "WALLETS_LOCK", "PostgresWalletStore", "wallet_from_row"]

_log = logging.getLogger(__name__)

# Every wallet write holds this transaction lock: what SQLite's BEGIN IMMEDIATE gives,
# a look-up and the insert it decides with no other writer in between (any replica).
WALLETS_LOCK = "balances.wallets"
_COLUMNS = "wallet_id, tenant, customer_id, network, address, created_at"
_SELECT = f"SELECT {_COLUMNS} FROM wallets"  # noqa: S608 - fixed column lists, values are parameters
# Served by the index wallets_by_customer alone: one range, already in this order.
CUSTOMER_WALLETS = (
    _SELECT + " WHERE tenant = $1 AND customer_id = $2 ORDER BY network, created_at, wallet_id"
)
# An import that adds this many wallets refreshes the planner's statistics of the table.
_ANALYZE_AFTER_ROWS = 1000


class PostgresWalletStore:
    """``WalletDirectory`` on the shared ``PostgresDatabase`` (the ``wallets`` table)."""

    def __init__(self, database: PostgresDatabase, *, clock: Clock = utc_now) -> None:
        self._database = database
        self._clock = clock

    async def get_wallet(self, tenant: str, wallet_id: str) -> Wallet:
        parse_wallet_id(wallet_id)
        row = await self._database.fetchrow(_SELECT + " WHERE wallet_id = $1", wallet_id)
        if row is None or row["tenant"] != tenant:
            raise WalletNotFound(wallet_id)
        return wallet_from_row(row)

    async def customer_wallets(self, tenant: str, customer_id: str) -> list[Wallet]:
        parse_customer_id(customer_id)
        rows = await self._database.fetch(CUSTOMER_WALLETS, tenant, customer_id)
        if not rows:
            raise CustomerNotFound(customer_id)
        return [wallet_from_row(row) for row in rows]

    async def import_wallets(self, tenant: str, rows: Sequence[WalletRow]) -> list[Wallet]:
        if not rows:
            return []
        now = self._clock().astimezone(UTC)
        async with self._database.transaction(WALLETS_LOCK, changes=True) as connection:
            wallets, created = await _insert_rows(connection, tenant, list(rows), now)
        _log.info("imported %d wallets for tenant %s (%d new)", len(wallets), tenant, created)
        if created >= _ANALYZE_AFTER_ROWS:
            await self._database.execute("ANALYZE wallets")
        return wallets

    async def register_wallet(
        self, tenant: str, customer_id: str, network: str, address: str
    ) -> tuple[Wallet, bool]:
        row = WalletRow(customer_id=customer_id, network=network, address=address)
        now = self._clock().astimezone(UTC)
        async with self._database.transaction(WALLETS_LOCK, changes=True) as connection:
            existing = await _select_by_address(connection, tenant, network, address)
            if existing is not None:
                if existing.customer_id != customer_id:
                    raise AddressTaken(network, address)
                return existing, False
            (wallet,), _ = await _insert_rows(connection, tenant, [row], now)
        _log.info("registered wallet %s for tenant %s", wallet.wallet_id, tenant)
        return wallet, True

    async def list_wallets(
        self, tenant: str, customer_id: str, *, after: WalletCursor | None, limit: int
    ) -> list[Wallet]:
        parse_customer_id(customer_id)
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        query = _SELECT + " WHERE tenant = $1 AND customer_id = $2"
        parameters: list[object] = [tenant, customer_id]
        if after is not None:
            query += " AND (created_at, wallet_id) > ($3, $4)"
            parameters += [after.created_at, after.wallet_id]
        query += f" ORDER BY created_at, wallet_id LIMIT ${len(parameters) + 1}"
        rows = await self._database.fetch(query, *parameters, limit)
        return [wallet_from_row(row) for row in rows]

    async def delete_wallet(self, tenant: str, customer_id: str, wallet_id: str) -> Wallet:
        parse_customer_id(customer_id)
        parse_wallet_id(wallet_id)
        async with self._database.transaction(changes=True) as connection:
            row = await connection.fetchrow(
                "DELETE FROM wallets WHERE wallet_id = $1 AND tenant = $2 AND customer_id = $3"  # noqa: S608 - fixed column lists, values are parameters
                f" RETURNING {_COLUMNS}",
                wallet_id,
                tenant,
                customer_id,
            )
        if row is None:
            raise WalletNotFound(wallet_id)
        _log.info("deleted wallet %s of tenant %s", wallet_id, tenant)
        return wallet_from_row(row)


async def _insert_rows(
    connection: Connection, tenant: str, rows: list[WalletRow], now: datetime
) -> tuple[list[Wallet], int]:
    """Register ``rows`` inside the caller's transaction; return (wallets, how many new)."""
    wallets: list[Wallet] = []
    created = 0
    for number, row in enumerate(rows, start=1):
        by_id = await _select_wallet(connection, row.wallet_id) if row.wallet_id else None
        by_address = await _select_by_address(connection, tenant, row.network, row.address)
        existing = existing_wallet_for(row, number, tenant, by_id, by_address)
        if existing is not None:
            wallets.append(existing)
            continue
        wallet = Wallet(
            wallet_id=row.wallet_id or await _unused_wallet_id(connection),
            tenant=tenant,
            customer_id=row.customer_id,
            network=row.network,
            address=row.address,
            created_at=now,
        )
        await connection.execute(
            f"INSERT INTO wallets ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)",  # noqa: S608 - fixed column lists, values are parameters
            wallet.wallet_id,
            tenant,
            wallet.customer_id,
            wallet.network,
            wallet.address,
            now,
        )
        wallets.append(wallet)
        created += 1
    return wallets, created


async def _unused_wallet_id(connection: Connection) -> str:
    while True:
        wallet_id = new_wallet_id()
        if await _select_wallet(connection, wallet_id) is None:
            return wallet_id


async def _select_wallet(connection: Connection, wallet_id: str) -> Wallet | None:
    row = await connection.fetchrow(_SELECT + " WHERE wallet_id = $1", wallet_id)
    return None if row is None else wallet_from_row(row)


async def _select_by_address(
    connection: Connection, tenant: str, network: str, address: str
) -> Wallet | None:
    row = await connection.fetchrow(
        _SELECT + " WHERE tenant = $1 AND network = $2 AND address = $3", tenant, network, address
    )
    return None if row is None else wallet_from_row(row)


def wallet_from_row(row: Any) -> Wallet:
    """A ``Wallet`` from a record with the columns of ``_COLUMNS``."""
    return Wallet(
        wallet_id=row["wallet_id"],
        tenant=row["tenant"],
        customer_id=row["customer_id"],
        network=row["network"],
        address=row["address"],
        created_at=row["created_at"].astimezone(UTC),
    )


if TYPE_CHECKING:
    _: type[WalletDirectory] = PostgresWalletStore  # checked by mypy: the class is the port
