"""The ``FollowerStateStore`` port on SQLite: each network's last read, across restarts."""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

from service.domain import BlockRef, FollowerState
from service.store.announced import decode_announced, encode_announced
from service.store.sqlite.database import SqliteDatabase

if TYPE_CHECKING:
    from service.ports import FollowerStateStore

__all__ = ["SqliteFollowerStateStore"]


class SqliteFollowerStateStore:
    """``FollowerStateStore`` on the shared ``SqliteDatabase`` (the ``follower_state`` table).

    Amounts are stored as decimal strings in JSON: uint256 exceeds SQLite's integers.
    """

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def load_follower_state(self, network: str) -> FollowerState | None:
        return await self._database.run(_select_follower_state, network)

    async def save_follower_state(self, state: FollowerState) -> None:
        await self._database.write(_upsert_follower_state, state)


def _select_follower_state(connection: sqlite3.Connection, network: str) -> FollowerState | None:
    row = connection.execute(
        "SELECT block_number, block_hash, block_timestamp, balances, announced"
        " FROM follower_state WHERE network = ?",
        (network,),
    ).fetchone()
    if row is None:
        return None
    balances = {
        address: {symbol: int(raw) for symbol, raw in amounts.items()}
        for address, amounts in json.loads(row[3]).items()
    }
    announced, reorgs = decode_announced(row[4])
    return FollowerState(BlockRef(network, row[0], row[1], row[2]), balances, announced, reorgs)


def _upsert_follower_state(connection: sqlite3.Connection, state: FollowerState) -> None:
    balances = {
        address: {symbol: str(raw) for symbol, raw in amounts.items()}
        for address, amounts in state.balances.items()
    }
    block = state.block
    connection.execute(
        "INSERT INTO follower_state"
        " (network, block_number, block_hash, block_timestamp, balances, announced)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (network) DO UPDATE SET"
        " block_number = excluded.block_number, block_hash = excluded.block_hash,"
        " block_timestamp = excluded.block_timestamp, balances = excluded.balances,"
        " announced = excluded.announced",
        (
            block.network,
            block.number,
            block.hash,
            block.timestamp,
            json.dumps(balances),
            encode_announced(state.announced, state.reorgs),
        ),
    )


if TYPE_CHECKING:
    _: type[FollowerStateStore] = SqliteFollowerStateStore  # checked by mypy: the class is the port
