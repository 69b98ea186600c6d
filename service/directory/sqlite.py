"""The wallet directory on SQLite: one connection, used from one worker thread."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from service.directory.base import WalletRow, new_wallet_id
from service.directory.rules import existing_wallet_for
from service.directory.sqlite_schema import migrate
from service.domain import Wallet, parse_customer_id, parse_wallet_id
from service.errors import CustomerNotFound, WalletNotFound

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
_BUSY_TIMEOUT_SECONDS = 10.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SqliteWalletDirectory:
    """``WalletDirectory`` on a SQLite file (WAL, foreign keys on, migrated at open).

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
    connection.execute("BEGIN IMMEDIATE")
    try:
        result = _insert_rows(connection, tenant, rows, now)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return result


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
        created_at=datetime.fromisoformat(created_at).astimezone(UTC),
    )


def _timestamp(moment: datetime) -> str:
    """UTC ISO-8601 with microseconds and ``Z``: fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
